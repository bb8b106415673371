"""ONNX export: checker, native LayerNormalization, parity with PyTorch, atomic repository."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_models import TINY, save_tiny
from torch import nn

from denoise import export
from denoise.errors import DenoiseError
from denoise.export import ExportSettings, check_onnx, export_checkpoint, export_onnx, parity
from denoise.triton.repository import (
    INPUT_NAME,
    NETWORK_KEY,
    ONNX_MODEL,
    PYTHON_MODEL,
    PYTHON_MODEL_TEMPLATE,
    SOURCE_ONNX_KEY,
    TRT_MODEL,
    config_parameter,
    file_md5,
    model_config,
    onnx_metadata,
)

SETTINGS = ExportSettings(
    opset=17,
    tolerance=1e-4,
    parity_sizes=((32, 32), (30, 45), (17, 51)),
    parity_batch=2,
    seed=0,
    max_batch_size=4,
    python_threads=1,
)


def tiny_checkpoint(tmp_path: Path, name: str) -> tuple[Path, nn.Module]:
    """A tiny network with random (non-identity) weights saved as models/<name>.pt."""
    path = tmp_path / "models" / f"{name}.pt"
    return path, save_tiny(path, name, scale=0.05)


@pytest.mark.parametrize("name", ["nafnet", "dncnn"])
def test_export_checkpoint_writes_verified_routes(tmp_path: Path, name: str) -> None:
    ckpt, model = tiny_checkpoint(tmp_path, name)
    repo, metrics = tmp_path / "model_repository", tmp_path / "metrics" / "export.json"
    report = export_checkpoint(ckpt, repo, metrics, SETTINGS)

    assert report["passed"] and report["max_abs_diff"] <= SETTINGS.tolerance
    assert set(report["max_abs_diff_per_size"]) == {"32x32", "30x45", "17x51"}
    assert json.loads(metrics.read_text()) == report
    if name == "nafnet":
        assert report["layernorm_nodes"] == 2 * (1 + 1 + 1 + 1 + 1)  # two per NAFBlock
    for model_name in (ONNX_MODEL, PYTHON_MODEL):
        config = (repo / model_name / "config.pbtxt").read_text()
        assert config_parameter(config, NETWORK_KEY) == name  # which network it serves
        assert onnx_metadata(repo / model_name / "1" / "model.onnx")[NETWORK_KEY] == name
    assert (repo / PYTHON_MODEL / "1" / "model.py").read_text() == PYTHON_MODEL_TEMPLATE.read_text()
    # The published file itself, on a size and batch the parity check did not use.
    x = np.random.default_rng(1).random((3, 3, 23, 41), dtype=np.float32)
    sess = ort.InferenceSession(
        str(repo / ONNX_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (y,) = sess.run(None, {INPUT_NAME: x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-4)
    assert np.abs(y - x).max() > 1e-3  # not the identity: the check above means something


def test_failed_parity_leaves_repository_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, _ = tiny_checkpoint(tmp_path, "dncnn")
    repo, metrics = tmp_path / "repo", tmp_path / "export.json"
    old = repo / ONNX_MODEL / "config.pbtxt"
    old.parent.mkdir(parents=True)
    old.write_text("previous model\n")
    engine = repo / TRT_MODEL / "1" / "model.plan"  # built from the previous ONNX
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"the previous network's engine")
    monkeypatch.setattr(export, "parity", lambda *a, **k: {"32x32": 0.5, "17x51": 2e-5})
    with pytest.raises(DenoiseError, match=r"differs from PyTorch by 0\.5"):
        export_checkpoint(ckpt, repo, metrics, SETTINGS)
    assert old.read_text() == "previous model\n"
    assert not (repo / PYTHON_MODEL).exists()
    assert engine.read_bytes() == b"the previous network's engine"
    assert json.loads(metrics.read_text())["passed"] is False


TRT_CONFIG = {"max_batch_size": 1, "platform": "tensorrt_plan"}


def test_an_engine_of_another_onnx_is_removed_and_one_of_the_same_kept(tmp_path: Path) -> None:
    """A new export makes an engine of the previous ONNX stale (served beside the new ONNX it
    would answer with the old network); a re-run that writes the same bytes (a changed
    tolerance) keeps it, since build-trt, whose input did not change, would not rebuild it."""
    ckpt, _ = tiny_checkpoint(tmp_path, "dncnn")
    repo, metrics = tmp_path / "repo", tmp_path / "export.json"
    config = repo / TRT_MODEL / "config.pbtxt"
    config.parent.mkdir(parents=True)
    config.write_text(model_config(TRT_MODEL, **TRT_CONFIG, parameters={SOURCE_ONNX_KEY: "0"}))
    export_checkpoint(ckpt, repo, metrics, SETTINGS)
    assert not (repo / TRT_MODEL).exists()

    onnx_md5 = file_md5(repo / ONNX_MODEL / "1" / "model.onnx")
    config.parent.mkdir(parents=True)
    config.write_text(model_config(TRT_MODEL, **TRT_CONFIG, parameters={SOURCE_ONNX_KEY: onnx_md5}))
    export_checkpoint(ckpt, repo, metrics, SETTINGS)  # the same model: the same bytes
    assert file_md5(repo / ONNX_MODEL / "1" / "model.onnx") == onnx_md5
    assert config.is_file()


def test_a_write_cut_short_leaves_the_previous_export_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk half-way through the routes: one line naming the repository; both routes
    still serve the previous network (never one route the new, one the old), the engine of the
    previous ONNX is gone already, and the report still describes the previous export."""
    repo, metrics = tmp_path / "repo", tmp_path / "export.json"
    previous, _ = tiny_checkpoint(tmp_path / "a", "dncnn")
    export_checkpoint(previous, repo, metrics, SETTINGS)
    report = metrics.read_text()
    config = repo / TRT_MODEL / "config.pbtxt"
    config.parent.mkdir(parents=True)
    config.write_text(model_config(TRT_MODEL, **TRT_CONFIG, parameters={SOURCE_ONNX_KEY: "0"}))
    copy = shutil.copyfile

    def disk_full(src: str, dst: str | Path) -> Path:
        if PYTHON_MODEL in str(dst):  # the second route: the first is written by now
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    ckpt, _ = tiny_checkpoint(tmp_path / "b", "nafnet")
    with pytest.raises(DenoiseError, match=r"repo: cannot write \(No space left on device: "):
        export_checkpoint(ckpt, repo, metrics, SETTINGS)
    for name in (ONNX_MODEL, PYTHON_MODEL):
        assert config_parameter((repo / name / "config.pbtxt").read_text(), NETWORK_KEY) == "dncnn"
        assert onnx_metadata(repo / name / "1" / "model.onnx")[NETWORK_KEY] == "dncnn"
    assert not (repo / TRT_MODEL).exists()
    assert metrics.read_text() == report
    assert sorted(p.name for p in repo.iterdir()) == [ONNX_MODEL, PYTHON_MODEL]  # no staging


def test_a_nan_at_any_size_fails_parity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python's max() would drop a NaN that is not first: max([1e-6, nan]) is 1e-6.
    ckpt, _ = tiny_checkpoint(tmp_path, "dncnn")
    monkeypatch.setattr(export, "parity", lambda *a, **k: {"32x32": 1e-6, "17x51": float("nan")})
    with pytest.raises(DenoiseError, match=r"differs from PyTorch by nan"):
        export_checkpoint(ckpt, tmp_path / "repo", tmp_path / "export.json", SETTINGS)
    assert not (tmp_path / "repo").exists()
    assert json.loads((tmp_path / "export.json").read_text())["passed"] is False


class ShapeBakedAtTrace(nn.Module):
    """Adds 1 only to inputs wider than 40 px: a Python branch the tracer freezes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 if x.shape[-1] > 40 else x


def test_parity_catches_a_shape_frozen_at_trace_time(tmp_path: Path) -> None:
    path = tmp_path / "frozen.onnx"
    with pytest.warns(torch.jit.TracerWarning):
        export_onnx(ShapeBakedAtTrace(), path, sample_hw=(64, 64))
    diffs = parity(ShapeBakedAtTrace(), path, [(64, 64), (17, 23)], batch=1)
    assert diffs["64x64"] == 0.0
    assert diffs["17x23"] == pytest.approx(1.0)


class EdgeBakedAtTrace(nn.Module):
    """Adds 1 to the last column of inputs wider than 40 px: an error at the edge only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] <= 40:
            return x
        return torch.cat([x[..., :-1], x[..., -1:] + 1.0], dim=-1)


def test_parity_is_the_worst_pixel_not_an_average(tmp_path: Path) -> None:
    path = tmp_path / "edge.onnx"
    with pytest.warns(torch.jit.TracerWarning):
        export_onnx(EdgeBakedAtTrace(), path, sample_hw=(64, 64))
    diffs = parity(EdgeBakedAtTrace(), path, [(17, 23)], batch=2)
    assert diffs["17x23"] == pytest.approx(1.0)  # one column in 23: a mean would say 0.04


def test_checker_and_layernorm_requirement(tmp_path: Path) -> None:
    _, dncnn = tiny_checkpoint(tmp_path, "dncnn")
    path = tmp_path / "dncnn.onnx"
    export_onnx(dncnn, path)
    ops = check_onnx(path, require_layernorm=False)
    assert ops["Conv"] == TINY["dncnn"]["nb"]
    with pytest.raises(DenoiseError, match="no LayerNormalization"):
        check_onnx(path, require_layernorm=True)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DenoiseError, match=r"broken\.onnx: onnx\.checker failed"):
        check_onnx(broken, require_layernorm=False)


def test_old_opset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DenoiseError, match="opset 13"):
        export_onnx(nn.Identity(), tmp_path / "x.onnx", opset=13)
    assert not (tmp_path / "x.onnx").exists()


def test_settings_from_params_reject_unknown_and_missing() -> None:
    params = {
        "opset": 17,
        "tolerance": 1e-4,
        "parity_sizes": [[8, 8]],
        "parity_batch": 1,
        "seed": 0,
        "max_batch_size": 2,
        "python_threads": 0,
    }
    assert ExportSettings.from_params(params).parity_sizes == ((8, 8),)
    with pytest.raises(DenoiseError, match=r"export: unknown opst"):
        ExportSettings.from_params({**params, "opst": 17})
    with pytest.raises(DenoiseError, match=r"export: missing seed"):
        ExportSettings.from_params({k: v for k, v in params.items() if k != "seed"})
    for bad, message in (
        ({"opset": 99}, r"opset must be 17-20"),
        ({"parity_sizes": []}, r"parity_sizes must be one or more"),
        ({"parity_sizes": [[0, 5]]}, r"parity_sizes .* of sides >= 1"),
        ({"parity_batch": 0}, r"parity_batch and max_batch_size must be >= 1"),
        ({"tolerance": -1.0}, r"tolerance and python_threads must be >= 0"),
        ({"seed": -1}, r"seed must be an integer in 0\.\.2\*\*32-1"),
    ):
        with pytest.raises(DenoiseError, match=rf"^params\.yaml export: {message}"):
            ExportSettings.from_params({**params, **bad})


def test_the_newest_opset_allowed_is_the_exporters() -> None:
    from torch.onnx import _constants

    assert export.MAX_OPSET == _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
