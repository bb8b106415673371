"""Work and peak: the multiply-accumulates of a network, and what the machine can reach.

``denoise bench`` reports each path's compute as a share of the machine's peak, both measured
in the same run: MACs by forward hooks (:func:`count_macs`), the peak per precision as the
better of a large matmul and a large 3x3 convolution (:func:`machine_info`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on an input of ``input_shape`` (NCHW).

    Counts every ``nn.Conv2d`` (``out elements x in_channels/groups x kh x kw``) and
    ``nn.Linear`` (``out elements x in_features``) through forward hooks, so padding inside
    the model and the real output sizes are taken into account. Elementwise work (norms,
    gates, activations) is not counted: it is memory-bound and small in MACs.
    """
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return total


def _best_time(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (allocation, kernel choice)."""
    best = float("inf")
    for i in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(
    dtype: torch.dtype, device: str = "cpu", n: int | None = None, repeats: int = 5
) -> float:
    """GFLOP/s of the best of ``repeats`` ``n x n`` matmuls.

    ``torch.int8`` uses ``torch._int_mm`` (int8 x int8 -> int32), the int8 GEMM peak.
    """
    n = n or (8192 if device.startswith("cuda") else 2048)
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (n, n), dtype=dtype, device=device)
        b = torch.randint(-128, 128, (n, n), dtype=dtype, device=device)
        mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch._int_mm
    else:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        mm = torch.matmul
    with torch.inference_mode():
        return 2.0 * n**3 / _best_time(lambda: mm(a, b), device, repeats) / 1e9


def conv_peak_gflops(
    dtype: torch.dtype,
    device: str = "cpu",
    channels: int = 256,
    hw: int = 64,
    batch: int | None = None,
    repeats: int = 5,
) -> float:
    """GFLOP/s of a large 3x3 convolution (oneDNN/cuDNN implicit GEMM).

    Measured beside the matmul because the two can use different kernels: on AMD CPUs
    ``torch.matmul`` FP32 goes through an AVX2 GEMM at about half the AVX-512 FMA peak that
    oneDNN's convolutions reach, so the matmul alone would understate the machine. On CUDA
    the batch defaults to 32 (155 GFLOP a call): a single 64x64 image (4.8 GFLOP) runs in tens of
    microseconds on an H200 and measured launch overhead rather than the GPU.
    """
    batch = batch or (32 if device.startswith("cuda") else 1)
    w = torch.randn(channels, channels, 3, 3, device=device).to(dtype)
    x = torch.randn(batch, channels, hw, hw, device=device).to(dtype)
    with torch.inference_mode():
        t = _best_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, repeats)
    return 2.0 * batch * channels * channels * 9 * hw * hw / t / 1e9


@contextlib.contextmanager
def strict_fp32(enabled: bool = True) -> Iterator[None]:
    """FP32 that is FP32 on CUDA: TF32 off for cuDNN convolutions and matmuls meanwhile
    (nothing changed where not ``enabled``).

    cuDNN runs FP32 convolutions in TF32 (a 10-bit mantissa, on tensor cores) by default; an
    "FP32" baseline or peak measured that way is TF32 (on an H100 the 3x3-conv probe read 265
    TFLOP/s, four times the FP32 peak). No effect on the CPU.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        return []


def cpu_name() -> str:
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


KERNEL_FEATURES = ("avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx")


def cpu_features() -> list[str]:
    """The vector and matrix extensions that decide which kernels oneDNN and inductor pick
    (AVX-512 and its bf16/fp16 forms, VNNI for int8, AMX); empty where /proc/cpuinfo is
    missing."""
    flags = next(
        (ln.split(":", 1)[1].split() for ln in _cpuinfo_lines() if ln.startswith("flags")), []
    )
    return sorted(f for f in flags if f.startswith(KERNEL_FEATURES))


def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on, and the peaks of ``device``: per precision the
    better of a large matmul and a large 3x3 convolution (both recorded)."""
    import onnxruntime

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "device": device,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.startswith("cuda"):
        kinds["fp16"] = torch.float16
    for kind, dtype in kinds.items():
        with strict_fp32(kind == "fp32"):
            mm = info[f"matmul_gflops_{kind}"] = round(matmul_peak_gflops(dtype, device), 1)
            conv = info[f"conv3x3_gflops_{kind}"] = round(conv_peak_gflops(dtype, device), 1)
        info[f"peak_gflops_{kind}"] = max(mm, conv)
    with contextlib.suppress(RuntimeError):  # no int8 GEMM kernel for this device/build
        info["peak_gops_int8"] = round(matmul_peak_gflops(torch.int8, device), 1)
    return info
