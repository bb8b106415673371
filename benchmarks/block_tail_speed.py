"""The block-tail kernel against what it replaces, per NAFNet level.

    python benchmarks/block_tail_speed.py [--batch 8] [--size 512] [--json OUT]

For each level of NAFNet-w32 at ``--size`` (width 32, 64, ... channels, the image halved each
level) and bf16 NHWC tensors, times (``triton.testing.do_bench``, median ms) the rest of a
block after its depthwise convolution (:mod:`denoise.fused.block_tail`):

- ``torch_ms``: the PyTorch form, torch.compile'd (three cuBLAS products and inductor's
  element-wise kernels: what the compiled network ran before the kernel);
- ``kernel_ms``: the Triton kernel at each of the width's candidate block sizes;
- ``tuned_ms``: the kernel as the network calls it, without block sizes (Triton's autotuner
  times the candidates once, then runs the fastest: ``tuned_choice``).

Each configuration's largest error against the PyTorch form in FP32 (no TF32) is recorded
beside its time, relative to the largest output. GB/s is of the least memory traffic the
operation needs (read the gate and the block's input, write the output: 3 ``C``-channel
passes). ``KERNEL_WIDTHS`` in :mod:`denoise.fused.block_tail` says which widths the network
sends to the kernel; ``in_network`` marks them. CUDA only.
"""

from __future__ import annotations

from functools import partial

import torch
import triton
from dwconv_gate_speed import level_arguments, run_levels

from denoise.fused.block_tail import KERNEL_WIDTHS, block_tail_reference
from denoise.fused.block_tail_triton import (
    block_tail_triton,
    tail_tuning_candidates,
    tuned_tail_blocks,
)


def level_inputs(batch: int, size: int, c: int, device: str = "cuda") -> tuple[torch.Tensor, ...]:
    """(x, attention, inp, w3, b3, w4, b4, w5, b5) in bf16, weights at the scale of trained
    ones."""
    shape = (batch, size, size, c)
    x, inp, attention = torch.randn(shape), torch.randn(shape), torch.randn(batch, c)
    w3, w4, w5 = (torch.randn(rows, c) / c**0.5 for rows in (c, 2 * c, c))
    tensors = (x, attention, inp, w3, torch.randn(c), w4, torch.randn(2 * c), w5, torch.randn(c))
    return tuple(t.to(device, torch.bfloat16) for t in tensors)


def measure_level(batch: int, size: int, c: int, compiled_torch) -> dict[str, object]:
    """One NAFNet level: ``size`` x ``size`` pixels, ``c`` channels."""
    x, attention, inp, *weights = level_inputs(batch, size, c)
    weights = tuple(weights)
    eps = 1e-6
    as_float = tuple(t.float() for t in weights)
    want = block_tail_reference(x.float(), attention.float(), inp.float(), as_float, eps)
    scale = float(want.abs().max())

    def error(got: torch.Tensor) -> float:
        return float((got.float() - want).abs().max()) / scale

    torch_run = partial(compiled_torch, x, attention, inp, weights, eps)
    row: dict[str, object] = {
        "size": size,
        "channels": c,
        "in_network": c in KERNEL_WIDTHS,
        "torch_ms": triton.testing.do_bench(torch_run),
        "torch_max_error": error(torch_run()),
    }
    times, errors = {}, {}
    for blocks in tail_tuning_candidates(c):
        run = partial(block_tail_triton, x, attention, inp, weights, eps, blocks)
        errors[str(blocks)] = error(run())
        times[str(blocks)] = triton.testing.do_bench(run)
    tuned = partial(block_tail_triton, x, attention, inp, weights, eps)
    row["tuned_max_error"] = error(tuned())  # the first call at the shape tunes
    row["tuned_choice"] = str(tuned_tail_blocks())
    row["tuned_ms"] = triton.testing.do_bench(tuned)
    row["kernel_ms"], row["kernel_max_error"] = times, errors
    least_bytes = x.numel() * 2 * 3  # read two C-channel tensors, write one, bf16
    row["tuned_gb_per_s"] = round(least_bytes / row["tuned_ms"] / 1e6, 1)
    row["torch_gb_per_s"] = round(least_bytes / row["torch_ms"] / 1e6, 1)
    row["speedup"] = round(row["torch_ms"] / row["tuned_ms"], 2)
    return row


def main() -> None:
    args = level_arguments(__doc__.splitlines()[0], "benchmarks/results/block_tail_speed.json")
    if not torch.cuda.is_available():
        raise SystemExit("block_tail_speed.py: needs a CUDA GPU")
    # The FP32 reference in true FP32; static shapes, one compiled kernel set per level, as in
    # the network (see dwconv_gate_speed.py).
    torch.backends.cuda.matmul.allow_tf32 = False
    compiled_torch = torch.compile(block_tail_reference, dynamic=False)
    run_levels(args, partial(measure_level, args.batch, compiled_torch=compiled_torch))


if __name__ == "__main__":
    main()
