"""`denoise bench`: MAC counting, the JSON report, reduced-precision paths, clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner, Result

import denoise.bench.inputs
import denoise.flops
from denoise.bench import run_bench
from denoise.bench.inputs import _fit, build_bench_model, psnr_pairs, synthetic_pairs
from denoise.bench.measurement import Job, measure, merge_rounds, peak_rss_mb
from denoise.bench.paths import AUTOTUNE_OPTIONS, BASELINE, PATHS, select_paths
from denoise.bench.report import MEASURED_KEYS, format_table, progress_line, summarise
from denoise.checkpoint import save_checkpoint
from denoise.cli import app
from denoise.errors import DenoiseError
from denoise.fileio import write_rgb8
from denoise.flops import count_macs, cpu_features, cpu_name
from denoise.infer import TorchBackend, open_backend
from denoise.metrics import psnr, to_uint8
from denoise.paths import TEST_DIR

TINY = {"width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
RESULT_KEYS = {
    "backend",
    "precision",
    "images_per_s",
    "megapixels_per_s",
    "ratio_vs_torch_eager",
    "psnr_delta_db",
    "peak_rss_mb",
    "gflops",
    "share_of_peak",
}


@pytest.fixture(autouse=True)
def no_default_test_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without --test-dir the bench takes the pipeline's test split where it exists (this
    repository's own after `dvc repro`): these tests get synthetic pairs wherever they run."""
    monkeypatch.setattr(denoise.bench.inputs, "TEST_DIR", tmp_path / "no-split")


@pytest.fixture(autouse=True)
def threads_left_alone() -> Iterator[None]:
    """A bench run inside another program leaves torch's thread count as it found it (a
    `--threads 1` run used to keep every later test in this session on one core)."""
    before = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == before


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.pt"
    model = build_bench_model("nafnet", TINY)
    save_checkpoint(path, "nafnet", TINY, model.state_dict())
    return path


def _tiny_run(
    ckpt: Path,
    backends: list[str],
    *,
    isolate: bool = False,
    progress: bool = False,
    **options: Any,
) -> dict:
    """``run_bench`` on the tiny checkpoint: 32 px, one repeat, one synthetic PSNR image."""
    return run_bench(
        str(ckpt), size=32, repeats=1, psnr_images=1, test_dir=None, val_dir=None,
        backends=backends, isolate=isolate, progress=progress, **options,
    )  # fmt: skip


def test_bench_finds_the_projects_files_from_a_folder_below_it(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``denoise run`` does: ``--model nafnet`` is the project's models/nafnet.pt, and the
    PSNR images its test split, also when the command runs in a folder inside the project."""
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    shutil.copy(tiny_ckpt, project / "models" / "nafnet.pt")
    noisy, clean = synthetic_pairs(1, 40, seed=3)
    write_rgb8(project / TEST_DIR / "noisy" / "a.png", noisy[0])
    write_rgb8(project / TEST_DIR / "clean" / "a.png", clean[0])
    (project / "src").mkdir()
    monkeypatch.chdir(project / "src")
    monkeypatch.setattr(denoise.bench.inputs, "TEST_DIR", TEST_DIR)  # undo the fixture's
    report = run_bench(
        "nafnet", size=32, repeats=1, psnr_images=1, backends=[BASELINE], isolate=False,
        progress=False,
    )  # fmt: skip
    assert report["model"]["source"] == str(project / "models" / "nafnet.pt")
    assert report["inputs"]["psnr_images"] == f"{project / TEST_DIR} (1 centre crops)"


def test_count_macs_of_known_layers() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (1, 3, 10, 10)) == 8 * 10 * 10 * 3 * 9
    assert count_macs(conv, (2, 3, 10, 10)) == 2 * 8 * 10 * 10 * 3 * 9
    strided = nn.Conv2d(4, 6, 2, stride=2)  # NAFNet's down-sampling: output 5x5
    assert count_macs(strided, (1, 4, 10, 10)) == 6 * 5 * 5 * 4 * 4
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(depthwise, (1, 8, 10, 10)) == 8 * 10 * 10 * 9
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    assert count_macs(mlp, (3, 3, 2, 2)) == 3 * (12 * 5 + 5 * 2)
    # hooks are removed afterwards: a second count is the same, not doubled
    assert count_macs(conv, (1, 3, 10, 10)) == 8 * 10 * 10 * 3 * 9


def test_cpu_name_and_the_features_that_pick_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [
        "model name\t: Intel(R) Xeon(R) Processor",
        "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_fp16 avx_vnni amx_bf16",
    ]
    monkeypatch.setattr(denoise.flops, "_cpuinfo_lines", lambda: lines)
    assert cpu_name() == "Intel(R) Xeon(R) Processor"
    assert cpu_features() == ["amx_bf16", "avx512_bf16", "avx512_fp16", "avx512f", "avx_vnni"]
    monkeypatch.setattr(denoise.flops, "_cpuinfo_lines", lambda: [])
    assert cpu_features() == [] and cpu_name()  # not Linux: the platform's own name


def test_count_macs_scales_with_pixels_on_nafnet() -> None:
    model = build_bench_model("nafnet", TINY)
    small, large = count_macs(model, (1, 3, 32, 32)), count_macs(model, (1, 3, 64, 64))
    assert small > 0
    # every conv scales with the pixels except SCA's 1x1 conv on the pooled 1x1 map
    assert 3.9 * small < large < 4 * small


def test_bf16_output_close_to_fp32() -> None:
    model = build_bench_model("nafnet", TINY)
    x = np.random.default_rng(0).random((2, 3, 40, 40), dtype=np.float32)
    ref = TorchBackend(model, device="cpu")(x)
    for amp in (False, True):
        out = TorchBackend(
            build_bench_model("nafnet", TINY),
            device="cpu",
            precision="bf16",
            channels_last=True,
            amp=amp,
        )(x)
        assert out.dtype == np.float32 and out.shape == ref.shape
        assert not np.array_equal(out, ref)  # it really ran in reduced precision
        assert np.abs(out - ref).max() < 0.05
        agree = np.mean(
            [
                psnr(to_uint8(o.transpose(1, 2, 0)), to_uint8(r.transpose(1, 2, 0)))
                for o, r in zip(out, ref, strict=True)
            ]
        )
        assert agree > 40.0


def test_unknown_names_are_clear_errors(tiny_ckpt: Path) -> None:
    with pytest.raises(DenoiseError, match="unknown bench backend 'nope'; known: torch"):
        select_paths(["nope"], "cpu")
    with pytest.raises(DenoiseError, match="not available on this machine"):
        select_paths(["torch-fp16-cudagraph"], "cpu")
    with pytest.raises(DenoiseError, match="unknown precision 'fp64'"):
        open_backend("torch", tiny_ckpt, precision="fp64")
    result = CliRunner().invoke(app, ["bench", "--model", str(tiny_ckpt), "--backends", "nope"])
    assert result.exit_code == 1
    assert "error: unknown bench backend 'nope'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "-1"], "error: threads -1 must be >= 0"),
        (["--rounds", "0"], "error: need size >= 16, batch, repeats, rounds and psnr images"),
        (["--model", "m/1/model.onnx"], "error: m/1/model.onnx: the bench needs a .pt"),
        (["--test-dir", "no/such/split"], "error: no/such/split: not a folder"),
        (["--test-dir", "."], "error: .: no pairs found"),
        (["--backends", ","], "error: --backends ',' names no backend"),
    ],
)
def test_bad_bench_options_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", "--size", "32", *args])
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1


def test_a_checkpoint_suffix_in_capitals_is_a_file(tiny_ckpt: Path, tmp_path: Path) -> None:
    from denoise.bench.inputs import prepare_model

    upper = tmp_path / "Model.PT"
    upper.write_bytes(tiny_ckpt.read_bytes())
    assert prepare_model(str(upper), "checkpoint", tmp_path).checkpoint == upper


def test_baseline_always_first_and_defaults_skip_opt_in() -> None:
    names = [p.name for p in select_paths(["torch-bf16", "torch-cl"], "cpu")]
    assert names == [BASELINE, "torch-bf16", "torch-cl"]
    default = [p.name for p in select_paths(None, "cpu")]
    assert default[0] == BASELINE and "onnxruntime" in default
    assert not any("compile" in n or "fp16" in n for n in default)


def test_bf16_cast_paths_cast_the_model_and_need_cuda() -> None:
    cast = [p for p in PATHS.values() if "cast" in p.name]
    assert {p.name for p in cast} == {
        "torch-bf16-cast-compile",
        "torch-bf16-cast-graphs",
        "torch-bf16-cast-autotune",
    }
    for path in cast:
        assert path.precision == "bf16" and path.options["amp"] is False
        assert path.needs_cuda and path.opt_in
        with pytest.raises(DenoiseError, match="not available on this machine"):
            select_paths([path.name], "cpu")
    assert PATHS["torch-bf16-cast-graphs"].options["compile"] == "reduce-overhead"


def test_autotune_options_are_inductor_settings() -> None:
    """A misspelt key would only fail once compiling on a GPU machine."""
    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    assert set(AUTOTUNE_OPTIONS) <= set(known)
    assert AUTOTUNE_OPTIONS["conv_1x1_as_mm"] and AUTOTUNE_OPTIONS["max_autotune"]


def test_progress_line_gives_each_path_as_it_finishes() -> None:
    run = {"times_s": [0.5, 0.4, 0.6], "first_call_s": 12.34}
    assert progress_line("torch", run, 8) == "torch: 16.0 images/s (first call 12.3 s)"
    gpu = {**run, "device_times_s": [0.02, 0.02, 0.03]}
    assert progress_line("p", gpu, 8) == "p: 16.0 images/s, 400.0 on the GPU (first call 12.3 s)"
    assert progress_line("p", {"error": "boom"}, 8) == "p: failed: boom"


def test_bench_prints_each_path_when_measured(
    tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _tiny_run(tiny_ckpt, ["torch", "torch-cl"], progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if "images/s" in line] == ["torch", "torch-cl"]


def test_fit_crops_and_pads_to_size() -> None:
    img = np.arange(30 * 50 * 3, dtype=np.uint8).reshape(30, 50, 3)
    out = _fit(img, 40)
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[5:35], img[:, 5:45])  # centre crop, padded rows


def test_bench_json_schema_and_baseline(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--model",
            str(tiny_ckpt),
            "--size",
            "32",
            "--batch",
            "2",
            "--repeats",
            "2",
            "--psnr-images",
            "3",
            "--backends",
            "torch-bf16,onnxruntime-int8",
            "--threads",
            "1",
            "--no-isolate",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| torch-bf16 |" in result.output and "synthetic camera" in result.output
    report = json.loads(out.read_text())
    machine = report["machine"]
    for key in ("cpu", "cores", "torch", "onnxruntime", "peak_gflops_fp32", "peak_gflops_bf16"):
        assert key in machine
    assert machine["peak_gflops_fp32"] > 0 and machine["peak_gflops_bf16"] > 0
    rows = {r["path"]: r for r in report["results"]}
    assert list(rows) == ["torch", "torch-bf16", "onnxruntime-int8"]
    for row in rows.values():
        assert set(row) >= RESULT_KEYS
        assert row["images_per_s"] > 0 and row["gflops"] > 0 and row["peak_rss_mb"] > 0
        assert row["megapixels_per_s"] == pytest.approx(
            row["images_per_s"] * 32 * 32 / 1e6, rel=1e-2
        )
    base = rows["torch"]
    assert base["ratio_vs_torch_eager"] == 1.0 and base["psnr_delta_db"] == 0.0
    assert (base["backend"], base["precision"]) == ("torch", "fp32")
    assert rows["torch-bf16"]["precision"] == "bf16"
    assert abs(rows["torch-bf16"]["psnr_delta_db"]) < 1.0
    assert rows["onnxruntime-int8"]["backend"] == "onnxruntime"
    assert report["model"]["gmacs_per_image"] > 0
    assert "synthetic" in report["inputs"]["psnr_images"]


def test_a_failing_path_is_reported_and_the_others_still_measured(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from denoise import bench
    from denoise.bench import inputs

    def no_int8(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no int8 kernel here\nsecond line")

    real_measure = bench.measure

    def measure(job: Job) -> dict:
        if job.path.name == "torch-bf16":
            raise RuntimeError("bf16 unsupported")
        return real_measure(job)

    monkeypatch.setattr(inputs, "quantize_int8", no_int8)
    monkeypatch.setattr(bench, "measure", measure)
    out = tmp_path / "bench.json"
    args = ["bench", "--model", str(tiny_ckpt), "--size", "32", "--repeats", "1"]
    args += ["--psnr-images", "1", "--backends", "torch-cl,torch-bf16,onnxruntime-int8"]
    args += ["--threads", "1", "--no-isolate"]
    result = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 1, result.output
    rows = {r["path"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["torch-bf16"]["error"] == "RuntimeError: bf16 unsupported"
    assert set(rows["torch-bf16"]) >= {"backend", "precision", *MEASURED_KEYS}
    assert all(rows["torch-bf16"][k] is None for k in MEASURED_KEYS)
    assert rows["onnxruntime-int8"]["error"] == (
        "building onnx-int8-static.onnx: RuntimeError: no int8 kernel here"
    )
    assert rows["torch-cl"]["images_per_s"] > 0 and "error" not in rows["torch-cl"]
    assert "| torch-cl |" in result.output and "| torch-bf16 |" not in result.output
    assert "failed: torch-bf16: RuntimeError: bf16 unsupported" in result.output

    def broken_baseline(job: Job) -> dict:
        raise RuntimeError("no memory")

    monkeypatch.setattr(bench, "measure", broken_baseline)
    with pytest.raises(DenoiseError, match=r"baseline every ratio needs, failed: RuntimeError"):
        _tiny_run(tiny_ckpt, [BASELINE])


def test_a_failed_export_fails_every_path_built_on_it(
    tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import denoise.export

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("export broke")

    monkeypatch.setattr(denoise.export, "export_onnx", broken)
    report = _tiny_run(tiny_ckpt, ["onnxruntime", "onnxruntime-int8"])
    rows = {r["path"]: r for r in report["results"]}
    assert rows["torch"]["images_per_s"] > 0
    for name in ("onnxruntime", "onnxruntime-int8"):
        assert rows[name]["error"] == "building model.onnx: ValueError: export broke"


def test_a_path_that_returns_nan_is_flagged_not_scored_as_merely_worse(
    tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As torch.compile of bf16 NAFNet-w32 did on an AVX-512 Xeon: every output NaN."""
    import denoise.infer

    real_open = denoise.infer.open_backend

    def open_backend(name: str, model: str, **options: Any) -> Any:
        backend = real_open(name, model, **options)
        if options.get("precision") != "bf16":
            return backend
        return lambda x: np.where(np.arange(x.size).reshape(x.shape) % 4 == 0, np.nan, backend(x))

    monkeypatch.setattr(denoise.infer, "open_backend", open_backend)
    report = _tiny_run(tiny_ckpt, ["torch-bf16"])
    rows = {r["path"]: r for r in report["results"]}
    assert rows["torch"]["nonfinite_fraction"] == 0.0
    assert rows["torch-bf16"]["nonfinite_fraction"] == pytest.approx(0.25, abs=0.01)
    assert rows["torch-bf16"]["within_psnr_tolerance"] is False
    assert "| torch-bf16 |" in format_table(report) and "(25% NaN/inf)" in format_table(report)


def test_perturbed_model_is_not_the_identity() -> None:
    noisy, _, source = psnr_pairs(None, 1, 32)
    assert "synthetic" in source and noisy.shape == (1, 32, 32, 3)
    model = build_bench_model("nafnet", TINY)
    x = torch.from_numpy(noisy.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    with torch.inference_mode():
        assert (model(x) - x).abs().max() > 1e-3  # perturbed: PSNR deltas mean something


def _raise_own_peak(mb: int) -> float:
    """Touch ``mb`` MB and free them: this process's peak RSS (MB) is then at least that."""
    np.ones(mb * 2**20, np.uint8).sum()
    return peak_rss_mb()


@pytest.mark.parametrize("isolate", [True, False])
def test_each_path_reports_its_own_peak(tiny_ckpt: Path, isolate: bool) -> None:
    """In a fresh process, or here after the counter is reset: not this process's earlier
    1.5 GB, which a running peak (or a child's ``ru_maxrss``, inherited at fork) would show."""
    earlier_peak = _raise_own_peak(1536)
    report = _tiny_run(tiny_ckpt, [BASELINE, "torch-cl"], threads=1, isolate=isolate)
    assert report["inputs"]["isolated_processes"] is isolate
    for row in report["results"]:
        assert 50 < row["peak_rss_mb"] < earlier_peak - 1000, row  # 50: torch was imported
    assert report["results"][0]["ratio_vs_torch_eager"] == 1.0


def test_fp32_paths_run_without_tf32(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's default TF32 would make the FP32 baseline a TF32 one on a GPU."""
    import denoise.infer

    seen: dict[str, tuple[bool, bool]] = {}
    real_open = denoise.infer.open_backend

    def open_backend(name: str, model: str, **options: Any) -> Any:
        flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        seen[options.get("precision", name)] = flags
        return real_open(name, model, **options)

    monkeypatch.setattr(denoise.infer, "open_backend", open_backend)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    _tiny_run(tiny_ckpt, ["torch-bf16"])
    assert seen == {"fp32": (False, False), "bf16": (True, False)}
    assert torch.backends.cudnn.allow_tf32  # restored


def test_measure_keeps_one_input_shape(tiny_ckpt: Path) -> None:
    """Odd image counts are padded to full batches (compiled and CUDA graphs see one shape)."""
    from denoise.bench.paths import PATHS

    seen: list[tuple[int, ...]] = []
    imgs = np.zeros((3, 3, 16, 16), np.uint8)
    job = Job(PATHS[BASELINE], str(tiny_ckpt), imgs[:2], imgs, 2, 1, 0, 1)
    original = TorchBackend.__call__

    def spy(self: TorchBackend, batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return original(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TorchBackend, "__call__", spy)
        result = measure(job)
    assert set(seen) == {(2, 3, 16, 16)}
    assert result["outputs"].shape == (3, 16, 16, 3)


def test_run_command_reports_empty_folders_and_bad_out_dirs(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(tmp_path / "empty"), "--model", str(tiny_ckpt)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {tmp_path / 'empty'}: no photos (.png")
    args = ["run", str(tmp_path / "empty"), "--model", str(tiny_ckpt)]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "afile")])
    assert result.exit_code == 1
    assert result.output == f"error: {tmp_path / 'afile'}: output folder is a file\n"


def test_run_command_takes_precision_options(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    import denoise.infer

    compiled: list[dict[str, Any]] = []

    def record(module: torch.nn.Module, options: dict[str, Any], mode: str | None) -> nn.Module:
        compiled.append(options)  # a real compile is tested in test_cpu_compile.py
        return module

    monkeypatch.setattr(denoise.infer, "compiled_for_cpu", record)

    photo = tmp_path / "photo.png"
    noisy, _ = psnr_pairs(None, 1, 24)[:2]
    cv2.imwrite(str(photo), noisy[0][..., ::-1])
    runner = CliRunner()

    def run(out: str, *options: str) -> Result:
        args = ["run", str(photo), "--model", str(tiny_ckpt), "-o", str(tmp_path / out)]
        return runner.invoke(app, [*args, *options])

    result = run("out", "--precision", "bf16", "--channels-last")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "photo_denoised.png").is_file()
    assert compiled == []
    result = run("out-compiled", "--precision", "bf16", "--compile")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out-compiled" / "photo_denoised.png").is_file()
    assert [options["freezing"] for options in compiled] == [True]
    result = run("out2", "--precision", "fp64")
    assert result.exit_code == 1 and "unknown precision 'fp64'" in result.output
    for option in ("--precision=bf16", "--compile"):
        result = runner.invoke(app, ["run", str(photo), "--model", "x.onnx", option])
        assert result.exit_code == 1 and "apply to the torch backend" in result.output
    result = run("out3", "--url", "127.0.0.1:8000")
    assert (
        result.exit_code == 1 and "--url applies to the triton backend, not torch" in result.output
    )
    result = run("out4", "--url", "")  # an unset $TRITON_URL: not quietly the default server
    assert result.exit_code == 1 and "error: --url is empty" in result.output


def test_summary_ratios_psnr_and_peak_share_from_known_timings() -> None:
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    base_out = np.clip(clean.astype(int) + 8, 0, 255).astype(np.uint8)  # a fixed error
    bf16_out = np.clip(clean.astype(int) + 4, 0, 255).astype(np.uint8)  # closer to clean
    # As good as FP32 against the clean images (the same squared error: -8 instead of +8 on a
    # few values), yet only 41 dB from FP32's output: a loss the 0.1 dB test cannot see.
    drifted = base_out.astype(int).ravel()
    movable = np.flatnonzero((clean.ravel() >= 8) & (clean.ravel() <= 247))
    drifted[rng.permutation(movable)[:8]] -= 16
    drifted = drifted.reshape(base_out.shape).astype(np.uint8)

    def run(times: list[float], outputs: np.ndarray, nonfinite: float = 0.0) -> dict:
        return {
            "times_s": times,
            "outputs": list(outputs),
            "peak_rss_mb": 100.0,
            "nonfinite_fraction": nonfinite,
            "open_s": 0.1,
            "first_call_s": 0.2,
        }

    runs = {
        BASELINE: run([2.0, 4.0, 2.0], base_out),  # median 2 s
        "torch-cl": run([0.5, 0.5, 9.0], base_out),  # median 0.5 s, same output
        "torch-bf16": run([0.25, 0.25, 0.25], bf16_out),
        # Scored like the baseline once its one NaN became 0, yet not within tolerance:
        "torch-compile": run([1.0, 1.0, 1.0], base_out, nonfinite=1e-6),
        "torch-bf16-amp": run([0.5, 0.5, 0.5], drifted),
    }
    machine = {"peak_gflops_fp32": 100.0, "peak_gflops_bf16": 400.0}
    paths = [PATHS[n] for n in runs]
    rows = {r["path"]: r for r in summarise(paths, runs, clean, 10**9, 64, 1, machine, {})}
    assert [rows[n]["ratio_vs_torch_eager"] for n in runs] == [1.0, 4.0, 8.0, 2.0, 4.0]
    assert rows["torch-bf16-amp"]["psnr_delta_db"] == 0.0
    assert rows["torch-bf16-amp"]["psnr_vs_fp32_output_db"] == pytest.approx(40.9, abs=0.1)
    assert rows["torch-bf16-amp"]["within_psnr_tolerance"] is False
    assert rows["torch-compile"]["psnr_delta_db"] == 0.0
    assert rows["torch-compile"]["within_psnr_tolerance"] is False
    assert rows["torch-compile"]["nonfinite_fraction"] == 1e-6
    assert rows["torch-cl"]["within_psnr_tolerance"] is True
    assert rows["torch-cl"]["psnr_delta_db"] == 0.0
    assert rows["torch-cl"]["psnr_vs_fp32_output_db"] is None  # identical to the baseline
    triples = zip(bf16_out, base_out, clean, strict=True)
    expected = np.mean([psnr(b, c) - psnr(o, c) for b, o, c in triples])
    assert rows["torch-bf16"]["psnr_delta_db"] == pytest.approx(expected, abs=2e-3) and expected > 1
    assert rows["torch-bf16"]["within_psnr_tolerance"] is False
    # 1 GMAC at 4 images/s = 8 GFLOP/s: 8% of the FP32 peak; bf16 is compared with its own.
    assert rows["torch"]["gflops"] == 1.0 and rows["torch-cl"]["share_of_peak"] == 0.04
    assert rows["torch-bf16"]["peak_compared_with"] == "bf16"
    assert rows["torch-bf16"]["share_of_peak"] == pytest.approx(8.0 / 400.0)


def test_on_gpu_times_get_their_own_rate_share_and_column() -> None:
    """CUDA rows carry the network-alone rate beside the end-to-end one; CPU rows do not."""
    clean = np.zeros((1, 8, 8, 3), np.uint8)
    out = [np.ones((8, 8, 3), np.uint8)]
    common = {"outputs": out, "peak_rss_mb": 1.0, "nonfinite_fraction": 0.0}
    common |= {"open_s": 0.0, "first_call_s": 0.0}
    runs = {
        BASELINE: {"times_s": [1.0], "device_times_s": [0.5, 0.25, 0.5], **common},
        "torch-cl": {"times_s": [0.5], **common},
        "torch-bf16": {"times_s": [0.5], "device_times_s": [0.25], **common},
    }
    machine = {"peak_gflops_fp32": 100.0, "peak_gflops_bf16": 400.0}
    paths = [PATHS[n] for n in runs]
    rows = summarise(paths, runs, clean, 10**9, 64, 4, machine, {})
    assert rows[0]["images_per_s"] == 4.0 and rows[0]["images_per_s_on_device"] == 8.0
    assert rows[0]["latency_ms_on_device"] == 500.0
    assert rows[0]["share_of_peak_on_device"] == pytest.approx(16.0 / 100.0)  # 8 img/s x 2 GFLOP
    assert "images_per_s_on_device" not in rows[1]
    assert rows[0]["ratio_vs_torch_eager_on_device"] == 1.0
    assert rows[2]["ratio_vs_torch_eager_on_device"] == 2.0  # 16 vs 8 images/s on the GPU
    assert rows[2]["ratio_vs_torch_eager"] == 2.0  # 8 vs 4 end to end
    report = {
        "machine": {**machine, "cpu": "x", "cores": 1, "device": "cuda", "gpu": "GPU-X",
                    "torch": "t", "onnxruntime": "o"},
        "model": {"name": "nafnet", "source": "s", "parameters": 1, "gmacs_per_image": 1.0},
        "inputs": {"size": 64, "batch": 4, "repeats": 1, "psnr_images": "p"},
        "results": rows,
    }  # fmt: skip
    table = format_table(report)
    assert "cuda (GPU-X)" in table and "on-GPU images/s |" in table
    assert "| 8.0 |" in table.splitlines()[-3] and table.splitlines()[-2].endswith("| - |")
    report["results"] = [r for r in rows if "images_per_s_on_device" not in r]
    assert "on-GPU" not in format_table(report)


def test_torch_backend_forward_stays_on_the_device_and_matches_call(tiny_ckpt: Path) -> None:
    from denoise.bench.measurement import device_times

    backend = open_backend("torch", tiny_ckpt, device="cpu", channels_last=True)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    y = backend.forward(backend.prepare(x))
    assert isinstance(y, torch.Tensor) and y.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(y.numpy(), backend(x))
    assert device_times(backend, x, 3) == []  # the network-alone timing is for CUDA only


def test_rounds_pool_the_calls_and_keep_each_rounds_ratio() -> None:
    """Two rounds: medians over all calls, a ratio per round, the worst memory and NaN share,
    the first round's outputs; one failed round makes the path failed."""
    out = [np.ones((8, 8, 3), np.uint8)]
    later = [np.zeros((8, 8, 3), np.uint8)]

    def measured(times: list[float], rss: float, outputs: list, nonfinite: float = 0.0) -> dict:
        first_call = 9.0 if outputs is out else 1.0  # later rounds find compiled code cached
        return {"times_s": times, "outputs": outputs, "peak_rss_mb": rss, "open_s": 0.0,
                "first_call_s": first_call, "nonfinite_fraction": nonfinite}  # fmt: skip

    base = merge_rounds([measured([1.0, 1.0], 10.0, out), measured([2.0, 2.0], 12.0, later)])
    fast = merge_rounds(
        [measured([0.5, 0.5], 20.0, out), measured([0.5, 0.5], 15.0, later, nonfinite=0.1)]
    )
    assert base["times_s"] == [1.0, 1.0, 2.0, 2.0] and base["round_medians_s"] == [1.0, 2.0]
    assert base["peak_rss_mb"] == 12.0 and base["first_call_s"] == 9.0 and base["outputs"] is out
    assert fast["peak_rss_mb"] == 20.0 and fast["nonfinite_fraction"] == 0.1
    single = measured([1.0], 1.0, out)
    assert merge_rounds([single]) is single
    assert merge_rounds([single, {"error": "boom"}]) == {"error": "boom"}
    runs = {BASELINE: base, "torch-cl": fast}
    rows = summarise([PATHS[n] for n in runs], runs, np.ones((1, 8, 8, 3), np.uint8), 10**9, 64,
                     1, {"peak_gflops_fp32": 100.0}, {})  # fmt: skip
    assert rows[0]["ratio_vs_torch_eager_by_round"] == [1.0, 1.0]
    # pooled: median 1.5 s against 0.5 s; per round: 1/0.5 and 2/0.5
    assert rows[1]["ratio_vs_torch_eager"] == 3.0
    assert rows[1]["ratio_vs_torch_eager_by_round"] == [2.0, 4.0]


def test_bench_rounds_interleave_every_path(tiny_ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    report = _tiny_run(tiny_ckpt, ["torch-cl"], rounds=2, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "images/s" in line]
    assert [line.split(":")[0] for line in lines] == [
        "torch (round 1)", "torch-cl (round 1)", "torch (round 2)", "torch-cl (round 2)",
    ]  # fmt: skip
    assert report["inputs"]["rounds"] == 2
    for row in report["results"]:
        assert len(row["ratio_vs_torch_eager_by_round"]) == 2
    assert "x 2 rounds" in format_table(report)
    assert re.search(r"\| \d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|", format_table(report))
    with pytest.raises(DenoiseError, match="rounds 0"):
        _tiny_run(tiny_ckpt, [BASELINE], rounds=0)


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat_file.parent.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_measuring_worker_ends_with_the_command(tiny_ckpt: Path, sig: signal.Signals) -> None:
    """A SIGTERM to the command alone waited for the path being measured (the pool's exit
    joins it: minutes); a SIGKILL left the worker running, orphaned, for as long."""
    cmd = [sys.executable, "-m", "denoise", "bench", "--model", str(tiny_ckpt), "--arch"]
    cmd += ["checkpoint", "--size", "32", "--repeats", "100000000", "--psnr-images", "1"]
    proc = subprocess.Popen(
        [*cmd, "--backends", BASELINE], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not workers:  # the spawned worker, measuring
            time.sleep(0.5)
            workers = [
                p
                for p in _children(proc.pid)
                if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
            ]
        assert workers, "no measuring worker started"
        time.sleep(2.0)  # past its start-up
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        assert code == (143 if sig == signal.SIGTERM else -9)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
            time.sleep(0.2)
        left = [w for w in workers if Path(f"/proc/{w}").exists()]
        assert not left, f"worker {left} outlived the command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for worker in workers:  # where the test failed: none left measuring
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGKILL)
