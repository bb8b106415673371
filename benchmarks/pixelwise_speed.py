"""The per-pixel kernels against what they replace, per NAFNet level.

    python benchmarks/pixelwise_speed.py [--batch 8] [--size 512] [--json OUT]

For each level of NAFNet-w32 at ``--size`` (width 32, 64, ... channels, the image halved each
level) and bf16 NHWC tensors, times (``triton.testing.do_bench``, median ms) both per-pixel
parts of a block (:mod:`denoise.fused.pixelwise`), ``head`` (LayerNorm and the 1x1
convolution to ``2C``) and ``tail`` (everything after the depthwise convolution):

- ``torch_ms``: the PyTorch form, torch.compile'd (cuBLAS products and inductor's element-wise
  kernels: what the compiled network ran before the kernels);
- ``kernel_ms``: the Triton kernel at each of the width's candidate block sizes;
- ``tuned_ms``: the kernel as the network calls it, without block sizes (Triton's autotuner
  times the candidates once, then runs the fastest: ``tuned_choice``).

Each configuration's largest error against the PyTorch form in FP32 (no TF32) is recorded
beside its time, relative to the largest output. GB/s is of the least memory traffic each
needs, 3 ``C``-channel passes (the head reads ``C`` and writes ``2C``; the tail reads the gate
and the block's input and writes the output). ``KERNEL_WIDTHS`` in
:mod:`denoise.fused.pixelwise` says which widths the network sends to the kernels;
``in_network`` marks them. CUDA only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import triton
from dwconv_gate_speed import level_arguments, run_levels

from denoise.fused.pixelwise import KERNEL_WIDTHS, block_head_reference, block_tail_reference
from denoise.fused.pixelwise_triton import (
    block_head_triton,
    block_tail_triton,
    tuned_blocks,
    tuning_candidates,
)

EPS = 1e-6


def level_inputs(
    batch: int, size: int, c: int, device: str = "cuda"
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Each kernel's inputs in bf16, weights at the scale of trained ones: ``head`` (inp, w1,
    b1), ``tail`` (x, attention, inp, (w3, b3, w4, b4, w5, b5))."""
    shape = (batch, size, size, c)
    x, inp, attention = torch.randn(shape), torch.randn(shape), torch.randn(batch, c)
    w1, w3, w4, w5 = (torch.randn(rows, c) / c**0.5 for rows in (2 * c, c, 2 * c, c))
    b1, b3, b4, b5 = (torch.randn(rows) for rows in (2 * c, c, 2 * c, c))

    def cast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(device, torch.bfloat16) for t in tensors)

    return {
        "head": cast(inp, w1, b1),
        "tail": (*cast(x, attention, inp), cast(w3, b3, w4, b4, w5, b5)),
    }


def as_float(tensors: tuple[object, ...]) -> tuple[object, ...]:
    """``tensors`` (and tuples of them) in FP32."""
    return tuple(as_float(t) if isinstance(t, tuple) else t.float() for t in tensors)


KERNELS: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "head": (block_head_reference, block_head_triton),
    "tail": (block_tail_reference, block_tail_triton),
}


def measure_kernel(
    which: str, tensors: tuple[object, ...], c: int, compiled_torch
) -> dict[str, object]:
    """One kernel at one level of ``c`` channels: the compiled PyTorch form, each candidate,
    the tuned kernel."""
    reference, kernel = KERNELS[which]
    want = reference(*as_float(tensors), EPS)
    scale = float(want.abs().max())

    def error(got: torch.Tensor) -> float:
        return float((got.float() - want).abs().max()) / scale

    torch_run = partial(compiled_torch, *tensors, EPS)
    row: dict[str, object] = {
        "torch_ms": triton.testing.do_bench(torch_run),
        "torch_max_error": error(torch_run()),
    }
    times, errors = {}, {}
    for blocks in tuning_candidates(c):
        run = partial(kernel, *tensors, EPS, blocks)
        errors[str(blocks)] = error(run())
        times[str(blocks)] = triton.testing.do_bench(run)
    tuned = partial(kernel, *tensors, EPS)
    row["tuned_max_error"] = error(tuned())  # the first call at the shape tunes
    row["tuned_choice"] = str(tuned_blocks(which))
    row["tuned_ms"] = triton.testing.do_bench(tuned)
    row["kernel_ms"], row["kernel_max_error"] = times, errors
    row["speedup"] = round(row["torch_ms"] / row["tuned_ms"], 2)
    return row


def measure_level(
    batch: int, size: int, c: int, compiled: dict[str, Callable[..., torch.Tensor]]
) -> dict[str, object]:
    """One NAFNet level: ``size`` x ``size`` pixels, ``c`` channels, both kernels."""
    inputs = level_inputs(batch, size, c)
    least_bytes = batch * size * size * c * 2 * 3  # three C-channel passes in bf16
    row: dict[str, object] = {"size": size, "channels": c, "in_network": c in KERNEL_WIDTHS}
    for which, tensors in inputs.items():
        measured = measure_kernel(which, tensors, c, compiled[which])
        measured["tuned_gb_per_s"] = round(least_bytes / measured["tuned_ms"] / 1e6, 1)
        measured["torch_gb_per_s"] = round(least_bytes / measured["torch_ms"] / 1e6, 1)
        row[which] = measured
    return row


def main() -> None:
    args = level_arguments(__doc__.splitlines()[0], "benchmarks/results/pixelwise_speed.json")
    if not torch.cuda.is_available():
        raise SystemExit("pixelwise_speed.py: needs a CUDA GPU")
    # The FP32 reference in true FP32; static shapes, one compiled kernel set per level, as in
    # the network (see dwconv_gate_speed.py).
    torch.backends.cuda.matmul.allow_tf32 = False
    compiled = {w: torch.compile(ref, dynamic=False) for w, (ref, _) in KERNELS.items()}
    run_levels(args, partial(measure_level, args.batch, compiled=compiled))


if __name__ == "__main__":
    main()
