"""The benchmark scripts' own logic: the speed verdicts, the GPU check's helpers, and what the
Triton kernels compile to for a GPU."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest
from tiny_models import save_tiny, tiny_model

from denoise.data.patch_store import read_patch_store, write_patch_store
from denoise.params import load_params
from denoise.training.config import TrainConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inference_speed = _script("inference_speed")
gpu_check = _script("gpu_check")
edge_padding = _script("edge_padding")
photo_memory = _script("photo_memory")


def _row(path: str, precision: str, ratio: float, **extra: Any) -> dict[str, Any]:
    return {
        "path": path,
        "precision": precision,
        "ratio_vs_torch_eager": ratio,
        "images_per_s": 10.0 * ratio,
        "latency_ms_median": 100.0 / ratio,
        "psnr_delta_db": 0.0,
        "share_of_peak": 0.1,
        "peak_compared_with": precision,
        "within_psnr_tolerance": True,
        **extra,
    }


def _report(rows: list[dict[str, Any]], device: str = "cpu") -> dict[str, Any]:
    return {
        "machine": {"device": device, "gpu": "GPU-X"},
        "inputs": {"size": 512, "batch": 8},
        "results": rows,
    }


def test_cpu_verdict_counts_only_paths_within_tolerance() -> None:
    rows = [
        _row("torch", "fp32", 1.0),
        _row("torch-compile", "fp32", 2.0, within_psnr_tolerance=False),  # fast but NaN
        _row("torch-cl", "fp32", 1.7),
        _row("torch-bf16", "bf16", 3.5),
    ]
    lines = inference_speed.verdict(_report(rows))
    assert "target 1.6x met: best torch-cl 1.70x" in lines[0]
    assert "target 3.0x met: best torch-bf16 3.50x" in lines[1]
    assert len(lines) == 2  # no GPU line on a CPU machine


def test_gpu_verdict_judges_the_on_gpu_rate_of_a_right_path() -> None:
    rows = [
        _row("torch", "fp32", 1.0, images_per_s_on_device=85.0, share_of_peak_on_device=0.1),
        _row(
            "torch-fp16-compile",
            "fp16",
            4.0,
            images_per_s_on_device=900.0,
            share_of_peak_on_device=0.1,
            within_psnr_tolerance=False,
        ),
        _row("torch-bf16-compile", "bf16", 4.4, images_per_s_on_device=454.0,
             share_of_peak_on_device=0.075),
    ]  # fmt: skip
    line = inference_speed.verdict(_report(rows, "cuda"))[-1]
    assert "target > 500 images/s NOT met on GPU-X" in line
    assert "best torch-bf16-compile 454 images/s on the GPU (44 with host copies)" in line
    rows[2]["images_per_s_on_device"] = 501.0
    assert "500 images/s met" in inference_speed.verdict(_report(rows, "cuda"))[-1]


def test_gpu_verdict_counts_a_path_without_on_gpu_times_end_to_end() -> None:
    """A TensorRT engine is timed only end to end (numpy in, numpy out): it still competes."""
    rows = [
        _row("torch-bf16-compile", "bf16", 4.4, images_per_s_on_device=454.0,
             share_of_peak_on_device=0.075),
        _row("tensorrt", "fp16", 60.0),  # 600 images/s with the copies
    ]  # fmt: skip
    report = _report(rows, "cuda")
    line = inference_speed.verdict(report)[-1]
    assert "met on GPU-X: best tensorrt 600 images/s end to end" in line
    report["inputs"]["batch"] = 1
    assert "(target is for 512 px, batch 8)" in inference_speed.verdict(report)[-1]


def test_training_workdir_overrides_the_recipe_and_links_the_data(tmp_path: Path) -> None:
    split = tmp_path / "split"
    split.mkdir()
    work = gpu_check.train_workdir(tmp_path, split, "run", "dncnn", {"iters": 7, "amp": False})
    assert (work / "data" / "split").resolve() == split.resolve()
    params = load_params(work / "params.yaml")
    cfg = TrainConfig.from_params(params["train"], "dncnn")
    assert cfg.iters == 7 and cfg.amp is False
    assert TrainConfig.from_params(params["train"], "nafnet").iters != 7


def test_subset_keeps_evenly_spaced_patches_and_the_test_images(tmp_path: Path) -> None:
    src = tmp_path / "split"
    for split, n in (("train", 10), ("val", 3)):
        patches = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
            (1, 4, 4, 3), np.uint8
        )
        write_patch_store(src / split, patches, patches)
    (src / "test").mkdir()
    (src / "test" / "a.png").write_bytes(b"png")
    gpu_check.make_subset(src, tmp_path / "small", train=4, val=5)
    noisy, _ = read_patch_store(tmp_path / "small" / "train")
    assert noisy[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    assert len(read_patch_store(tmp_path / "small" / "val")[0]) == 3
    assert (tmp_path / "small" / "test" / "a.png").read_bytes() == b"png"


def test_runner_logs_each_step_and_keeps_going(tmp_path: Path) -> None:
    runner = gpu_check.Runner(tmp_path, budget_s=60, steps={"versions", "train"})
    assert runner.run("versions", [sys.executable, "-c", "print('hi')"], 30) == "hi\n"
    assert runner.run("train-x", ["/nonexistent/nvidia-smi"], 30) is None
    assert runner.run("train-y", [sys.executable, "-c", "raise SystemExit(3)"], 30) is None
    assert runner.run("inference", [sys.executable, "-c", "print()"], 30) is None  # not asked
    assert runner.summary[0].startswith("versions: rc 0")
    assert runner.summary[1].startswith("train-x: rc not started")
    assert runner.summary[2].startswith("train-y: rc 3") and len(runner.summary) == 3
    runner.deadline = 0.0
    assert runner.run("train-z", [sys.executable, "-c", "print()"], 30) is None
    assert runner.summary[-1].startswith("train-z: not run")
    log = (tmp_path / "gpu_check.log").read_text()
    assert "== versions" in log and "hi" in log and "== train-y: rc 3" in log


def test_gpu_check_names_only_known_paths() -> None:
    """A misspelt name would be dropped silently as "not available on this machine"."""
    from denoise.bench.paths import PATHS

    lists = [gpu_check.EAGER_PATHS, gpu_check.COMPILE_PATHS, gpu_check.CAST_PATHS]
    lists += [gpu_check.AUTOTUNE_PATHS, gpu_check.FUSED_PATHS, gpu_check.SHIFT_PATHS]
    lists += [gpu_check.PIXELWISE_PATHS]
    assert set().union(*lists) <= set(PATHS)


def test_rolling_kernel_compiles_for_an_h100_without_spills() -> None:
    """Compiled for sm_90 here, with no GPU: at its default blocks for NAFNet's largest level
    the rolling kernel keeps every value in registers and loads each row as six 16-byte
    vector loads, in fewer than half the instructions per output of the kernel it would
    replace (whose loop reloads all 18 weights per row and spills)."""
    pytest.importorskip("triton")
    from denoise.fused.dwconv_gate_triton import block_sizes

    resources = _script("triton_kernel_resources").resources
    rolling = resources(block_sizes(512, 512, 32, rolling=True))
    rows = resources(block_sizes(512, 512, 32))
    assert rolling["spill_bytes"] == 0
    assert rolling["row_memory_ops"] == {"LDG.E.128": 6, "STG.E.128": 1}
    assert rows["spill_bytes"] > 0 and rows["row_memory_ops"]["LDG.E.U16"] == 144
    assert rolling["instructions_per_output"] < rows["instructions_per_output"] / 2


def test_pixelwise_kernels_compile_for_an_h100_on_tensor_cores() -> None:
    """Compiled for sm_90 here, with no GPU: at their default blocks for each width the
    network sends them, both per-pixel kernels keep every value in registers and do their
    products on the tensor cores (Hopper's warp-group instructions where a tile has 64 pixels
    or more)."""
    pytest.importorskip("triton")
    from denoise.fused.pixelwise import KERNEL_WIDTHS
    from denoise.fused.pixelwise_triton import default_blocks

    pixelwise_resources = _script("triton_kernel_resources").pixelwise_resources
    for which in ("head", "tail"):
        for channels in (c for c in KERNEL_WIDTHS if c >= 32):
            blocks = default_blocks(channels)
            used = pixelwise_resources(which, channels, blocks)
            assert used["spill_bytes"] == 0, used
            assert used["hgmma" if blocks.pixels >= 64 else "hmma"] > 0, used


@pytest.mark.parametrize(
    ("precision", "amp", "channels_last"),
    [("bf16", False, True), ("bf16", True, True), ("fp32", False, False)],
    ids=["bf16-cast", "bf16-autocast", "fp32"],
)
def test_pipelined_batches_reach_the_network_as_the_bench_prepares_them(
    precision: str, amp: bool, channels_last: bool
) -> None:
    """The pipelined loop makes the network's input on the GPU from 8-bit or float32 pixels;
    it must be the tensor :meth:`TorchBackend.prepare` makes (values, dtype and memory layout:
    another layout would recompile the path), and the output round as ``to_uint8`` rounds."""
    import torch

    from denoise.infer import TorchBackend
    from denoise.metrics import to_uint8

    pipelined = _script("pipelined_throughput")
    backend = TorchBackend(
        tiny_model("nafnet"), precision=precision, amp=amp, channels_last=channels_last
    )
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 24), dtype=np.uint8)
    want = backend.prepare(pixels.astype(np.float32) / 255.0)
    assert want.dtype == (torch.float32 if amp or precision == "fp32" else torch.bfloat16)
    for host in (torch.from_numpy(pixels), torch.from_numpy(pixels.astype(np.float32) / 255.0)):
        given = host.to(backend.device)  # as the loop's device buffers
        got = pipelined.network_input(backend, given)
        assert got.dtype == want.dtype and got.stride() == want.stride()
        assert torch.equal(got, want)
        assert got.data_ptr() != given.data_ptr()  # the input buffer may be refilled at once
    y = (torch.rand(2, 3, 16, 24) * 1.2 - 0.1).to(backend.dtype)
    got8 = pipelined.network_output(y, torch.uint8).numpy()
    assert np.array_equal(got8, to_uint8(y.float().numpy()))
    got32 = pipelined.network_output(y.float(), torch.float32)
    # a copy: the network's output buffer is overwritten by the next batch (CUDA graphs)
    assert torch.equal(got32, y.float()) and got32.data_ptr() != y.float().data_ptr()


@pytest.mark.parametrize("steps", [None, {"train"}])
def test_runner_wants(tmp_path: Path, steps: set[str] | None) -> None:
    runner = gpu_check.Runner(tmp_path, budget_s=1, steps=steps)
    assert runner.wants("train-nafnet-fp32")
    assert runner.wants("compile-fp16") is (steps is None)


def test_edge_padding_compares_both_paddings_per_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        folder = tmp_path / "test" / f"{i + 1:04d}_001_S6_00100_00060_3200_L"
        folder.mkdir(parents=True)
        clean = cv2.GaussianBlur(rng.integers(0, 256, (40, 56, 3)).astype(np.uint8), (5, 5), 0)
        noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "GT_SRGB_010.PNG"), clean)
        cv2.imwrite(str(folder / "NOISY_SRGB_010.PNG"), noisy)
    save_tiny(tmp_path / "nafnet.pt", "nafnet", scale=0.05)
    report = edge_padding.measure(tmp_path / "nafnet.pt", tmp_path / "test", 21, 37)
    assert report["pad_multiple"] == 4 and len(report["images"]) == 2
    gains = [r["psnr_reflect_db"] - r["psnr_zero_db"] for r in report["images"]]
    assert all(g != 0 for g in gains)  # the two paddings really gave different outputs
    assert report["mean_gain_db"] == pytest.approx(np.mean(gains), abs=1e-3)
    save_tiny(tmp_path / "dncnn.pt", "dncnn")
    with pytest.raises(SystemExit, match="pads nothing"):
        edge_padding.measure(tmp_path / "dncnn.pt", tmp_path / "test", 21, 37)


def test_photo_memory_reads_each_childs_own_peak(tmp_path: Path) -> None:
    """A 300 MB child, then a small one from this large process: each peak is the child's own
    (a child's ru_maxrss would start at this process's size), and a failure names its cause."""
    (tmp_path / "grab.py").write_text("import numpy as np\nprint(np.ones(300 * 2**20 // 8).sum())")
    (tmp_path / "fail.py").write_text("import sys\nsys.stderr.write('boom')\nsys.exit(3)")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    _, big = photo_memory.run_module("grab", [], env)
    _, small = photo_memory.run_module("json.tool", ["--help"])
    assert big > 300 > 100 > small
    with pytest.raises(SystemExit, match=r"python -m fail failed \(3\): boom$"):
        photo_memory.run_module("fail", [], env)
