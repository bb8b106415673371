"""TensorRT: detection, the skipped record (never a placeholder engine), settings, backend."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from denoise import tensorrt
from denoise.errors import DenoiseError
from denoise.infer import open_backend
from denoise.tensorrt import TrtSettings, build_trt, tensorrt_status
from denoise.triton.repository import TRT_MODEL

PARAMS = {
    "fp16": True,
    "min_shape": [1, 32, 32],
    "opt_shape": [1, 64, 64],
    "max_shape": [2, 128, 128],
    "workspace_gb": 1,
    "test_images": 2,
    "test_crop": 64,
    "latency_repeats": 3,
    "min_psnr_vs_onnxruntime": 40.0,
}


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_status_without_tensorrt(no_tensorrt: None) -> None:
    ok, why = tensorrt_status()
    assert not ok and "TensorRT is not installed" in why


def test_status_with_a_broken_tensorrt_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def failing_import(name: str, *args, **kwargs):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    assert tensorrt_status() == (
        False,
        "TensorRT cannot be loaded (import tensorrt: OSError: libnvinfer.so.10: "
        "cannot open shared object file)",
    )


def test_status_with_tensorrt_but_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tensorrt_status() == (False, "TensorRT 10.9 is installed but no CUDA GPU is visible")


@pytest.mark.parametrize(
    ("version", "supported"),
    [("10.9.0.34", True), ("8.6.1", True), ("11.4.0", False), ("8.5.3", False)],
)
def test_status_gates_the_tensorrt_version(
    monkeypatch: pytest.MonkeyPatch, version: str, supported: bool
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "GPU-X")
    ok, why = tensorrt_status()
    assert ok == supported
    assert why == (
        f"TensorRT {version} on GPU-X"
        if supported
        else f"TensorRT {version} is not supported: this build uses the weakly-typed FP16 "
        "API of TensorRT 8.6-10.x (removed in 11)"
    )


def test_skipped_build_records_why_and_writes_no_engine(
    no_tensorrt: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repo = tmp_path / "model_repository"
    stale = repo / TRT_MODEL / "1" / "model.plan"  # from an earlier ONNX
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"engine of another model")
    metrics = tmp_path / "metrics" / "build_trt.json"
    report = build_trt(repo, tmp_path / "test", metrics, TrtSettings.from_params(PARAMS))
    record = json.loads(metrics.read_text())
    assert record["status"] == "skipped" and "TensorRT is not installed" in record["reason"]
    assert report == record
    assert not (repo / TRT_MODEL).exists()
    assert not list(tmp_path.rglob("*.plan")) and not list(tmp_path.rglob("*.engine"))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("build-trt: skipped: TensorRT is not installed")


def test_a_skipped_build_keeps_an_engine_built_from_the_current_onnx(
    no_tensorrt: None, tmp_path: Path
) -> None:
    """A re-run where TensorRT is missing (a params or code change on a CPU machine) must not
    delete an engine a GPU built from the ONNX the repository holds with these settings; one
    of another ONNX, or built with other settings, goes."""
    from denoise.triton.repository import (
        BUILD_SETTINGS_KEY,
        ONNX_MODEL,
        SOURCE_ONNX_KEY,
        file_md5,
        model_config,
    )

    repo = tmp_path / "model_repository"
    onnx = repo / ONNX_MODEL / "1" / "model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"the exported network")
    plan = repo / TRT_MODEL / "1" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"engine")
    metrics = tmp_path / "build_trt.json"
    settings = TrtSettings.from_params(PARAMS)
    other = TrtSettings.from_params({**PARAMS, "max_shape": [4, 256, 256]})
    for built_from, built_with, kept in (
        (file_md5(onnx), settings, True),
        (file_md5(onnx), other, False),
        ("0" * 32, settings, False),
    ):
        config = model_config(
            TRT_MODEL,
            platform="tensorrt_plan",
            max_batch_size=2,
            parameters={SOURCE_ONNX_KEY: built_from, BUILD_SETTINGS_KEY: built_with.build_md5()},
        )
        plan.parent.mkdir(parents=True, exist_ok=True)
        plan.write_bytes(b"engine")
        (repo / TRT_MODEL / "config.pbtxt").write_text(config)
        report = build_trt(repo, tmp_path / "test", metrics, settings)
        assert report["status"] == "skipped"
        assert plan.is_file() == kept, built_from
        key = "kept_engine" if kept else "removed_stale"
        assert report[key] == str(repo / TRT_MODEL) and len(report) == 3, report


@pytest.mark.parametrize("failing", ["onnx", "build"])
def test_a_failed_build_is_recorded_as_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failing: str
) -> None:
    """Where TensorRT runs but a step fails (an unreadable ONNX file: not a DenoiseError; the
    engine build), the metrics say so, not an earlier run's result, and the stale engine is
    gone."""
    from denoise.triton.repository import ONNX_MODEL

    monkeypatch.setattr(tensorrt, "tensorrt_status", lambda: (True, ""))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9"))

    def failing_build(onnx_path: Path, settings: TrtSettings) -> tuple[bytes, int]:
        raise DenoiseError(f"{onnx_path}: TensorRT cannot parse it: no")

    monkeypatch.setattr(tensorrt, "build_engine", failing_build)
    if failing == "build":
        monkeypatch.setattr(tensorrt, "served_parameters", lambda path: {"pad_multiple": "16"})
    repo = tmp_path / "model_repository"
    (repo / ONNX_MODEL / "1").mkdir(parents=True)
    (repo / ONNX_MODEL / "1" / "model.onnx").write_bytes(b"not onnx")
    (repo / TRT_MODEL / "1").mkdir(parents=True)
    metrics = tmp_path / "build_trt.json"
    metrics.write_text('{"status": "built"}')  # an earlier run's
    reason = "cannot parse it: no" if failing == "build" else "Error parsing message"
    with pytest.raises(Exception, match=reason):
        build_trt(repo, tmp_path / "test", metrics, TrtSettings.from_params(PARAMS))
    record = json.loads(metrics.read_text())
    assert record["status"] == "failed" and reason in record["reason"], record
    assert record["tensorrt"] == "10.9" and record["onnx"].endswith("model.onnx")
    assert not (repo / TRT_MODEL).exists()


def test_backend_without_tensorrt_is_a_clear_error(no_tensorrt: None) -> None:
    with pytest.raises(DenoiseError, match=r"m\.plan: tensorrt backend unavailable"):
        open_backend("tensorrt", "m.plan")


def test_settings_profile_and_validation() -> None:
    settings = TrtSettings.from_params(PARAMS)
    assert settings.profile() == ((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))
    with pytest.raises(DenoiseError, match="min_shape <= opt_shape <= max_shape"):
        TrtSettings.from_params({**PARAMS, "opt_shape": [1, 256, 64]})
    with pytest.raises(DenoiseError, match=r"trt\.max_shape: expected a list of 3, got \[128, 128"):
        TrtSettings.from_params({**PARAMS, "max_shape": [128, 128]})
    for bad, match in (
        ({"min_shape": [0, 0, 0]}, r"trt: need 1 <= min_shape <= opt_shape"),
        ({"workspace_gb": -1}, r"trt\.workspace_gb: must be > 0 and finite, got -1\.0$"),
        ({"workspace_gb": math.nan}, r"trt\.workspace_gb: must be > 0 and finite, got nan$"),
        ({"test_images": 0}, r"trt\.test_images: must be >= 1, got 0$"),
        ({"test_crop": -1}, r"trt\.test_crop: must be >= 0, got -1$"),
        ({"latency_repeats": 0}, r"trt\.latency_repeats: must be >= 1, got 0$"),
    ):
        with pytest.raises(DenoiseError, match=rf"^params\.yaml {match}"):
            TrtSettings.from_params({**PARAMS, **bad})
    with pytest.raises(DenoiseError, match=r"trt: missing fp16"):
        TrtSettings.from_params({k: v for k, v in PARAMS.items() if k != "fp16"})


def test_the_engine_pads_as_its_triton_config_says(tmp_path: Path) -> None:
    """The multiple comes from ``denoise_trt/config.pbtxt`` (build-trt copies it there from
    the ONNX file), so ``denoise run --backend tensorrt`` reflect-pads tiles like the others."""
    from denoise.triton.repository import model_config

    plan = tmp_path / TRT_MODEL / "1" / "model.plan"
    plan.parent.mkdir(parents=True)
    assert tensorrt._configured_pad_multiple(plan) == 1  # no config: no padding
    config = tmp_path / TRT_MODEL / "config.pbtxt"
    for value, want in (("16", 16), ("0", None)):
        text = model_config(
            TRT_MODEL,
            platform="tensorrt_plan",
            max_batch_size=1,
            parameters={"pad_multiple": value},
        )
        config.write_text(text)
        if want:
            assert tensorrt._configured_pad_multiple(plan) == want
        else:
            with pytest.raises(DenoiseError, match=r"config\.pbtxt: pad_multiple '0' is not"):
                tensorrt._configured_pad_multiple(plan)
    # a plan outside a model's version folder reads no config (here: the bad one above)
    loose = tmp_path / "build" / "model.plan"
    (tmp_path / "config.pbtxt").write_text(config.read_text())
    assert tensorrt._configured_pad_multiple(loose) == 1


@pytest.mark.slow
@pytest.mark.skipif(not tensorrt_status()[0], reason="needs TensorRT and a CUDA GPU")
def test_engine_build_matches_onnxruntime(tmp_path: Path) -> None:  # pragma: no cover
    """Only where TensorRT runs: FP16 engine of a tiny NAFNet vs onnxruntime."""
    import numpy as np

    from denoise.export import export_onnx
    from denoise.infer import OnnxRuntimeBackend

    model = tiny_model("nafnet", scale=0.05)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path)
    plan, pinned = tensorrt.build_engine(onnx_path, TrtSettings.from_params(PARAMS))
    assert pinned > 0
    (tmp_path / "model.plan").write_bytes(plan)
    engine = tensorrt.TensorRTBackend(tmp_path / "model.plan")
    x = np.random.default_rng(0).random((2, 3, 48, 80), dtype=np.float32)
    ref = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])(x)
    assert np.abs(engine(x) - ref).max() < 1e-2
