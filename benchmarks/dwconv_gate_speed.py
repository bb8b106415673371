"""The fused depthwise-convolution + gate kernel against what it replaces, per NAFNet level.

    python benchmarks/dwconv_gate_speed.py [--batch 8] [--size 512] [--json OUT]

For each level of NAFNet-w32 at ``--size`` (width 32, 64, ... channels, the image halved each
level) and bf16 NHWC tensors, times (``triton.testing.do_bench``, median ms):

- ``unfused``: cuDNN's depthwise convolution, then the gate and the channel mean in PyTorch,
  torch.compile'd (what the compiled network does);
- ``shifted``: the convolution as nine shifted taps, torch.compile'd (inductor fuses the taps,
  the gate and the mean);
- the Triton kernel with its default block sizes, and with a few other block sizes that fit
  the level;
- the kernel's rolling form (each input row read once, three rows of sums), likewise;
- ``tuned``: the kernel as the network calls it, without block sizes: Triton's autotuner
  times the level's candidates of both forms once, then runs the fastest (``tuned_blocks``).

The kernel's times include its wrapper's two small reductions of the channel sums, as in the
network; each configuration's largest error against FP32 is recorded beside its time. GB/s is
of the least memory traffic the kernel needs (read ``2C``, write ``C`` channels). CUDA only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch
import triton

from denoise.fileio import write_json
from denoise.fused.dwconv_gate import dwconv_gate_reference, dwconv_gate_shifted
from denoise.fused.dwconv_gate_triton import (
    TUNING_CANDIDATES,
    Blocks,
    block_sizes,
    dwconv_gate_triton,
    tuned_blocks,
)

# Every candidate the autotuner times, then a few more sizes of each form.
VARIANTS = [
    *(b for b in TUNING_CANDIDATES if not b.rolling),
    Blocks(4, 64, 32, 4),
    Blocks(16, 64, 32, 4),
    Blocks(8, 128, 32, 4),
    Blocks(8, 64, 64, 8),
    Blocks(32, 32, 32, 4),
]
# 32 channels, so each fits every level. Compiled for an H100 without one (ptxas): 8 outputs
# a thread take 252 registers, so 8 warps a multiprocessor; 4 a thread take 138-167 with
# prefetch (stages > 1), so more warps fit; 8 a thread with prefetch spill.
ROLLING_VARIANTS = [
    *(b for b in TUNING_CANDIDATES if b.rolling),
    Blocks(8, 32, 32, 4, rolling=True),
    Blocks(32, 32, 32, 4, rolling=True),
    Blocks(16, 32, 32, 8, rolling=True),
]


def time_kernel(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    want_gate: torch.Tensor,
    variants: list[Blocks],
) -> tuple[dict[str, float], dict[str, float]]:
    """Per block sizes that fit the level: the median ms of the kernel (with its wrapper's two
    small reductions), and the largest error of its gate against ``want_gate`` (FP32). Prefetch
    (stages > 1) is compiled only on a GPU, so this is where each such variant is checked."""
    times, errors = {}, {}
    for blocks in dict.fromkeys(variants):
        if blocks.rows <= x.shape[1] and blocks.channels <= x.shape[-1] // 2:
            run = partial(dwconv_gate_triton, x, w, b, blocks)
            errors[str(blocks)] = float((run()[0].float() - want_gate).abs().max())
            times[str(blocks)] = triton.testing.do_bench(run)
    return times, errors


def measure_level(batch: int, size: int, c: int, unfused, shifted) -> dict[str, object]:
    """One NAFNet level: ``size`` x ``size`` pixels, ``2 * c`` channels into the kernel."""
    x = torch.randn(batch, size, size, 2 * c, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(2 * c, 9, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(2 * c, device="cuda", dtype=torch.bfloat16)
    gate, mean = dwconv_gate_triton(x, w, b, block_sizes(size, size, c))
    rolling_mean = dwconv_gate_triton(x, w, b, block_sizes(size, size, c, rolling=True))[1]
    tuned_gate, tuned_mean = dwconv_gate_triton(x, w, b)  # the first call at the shape tunes
    chosen = tuned_blocks()
    want_gate, want_mean = dwconv_gate_reference(x.float(), w.float(), b.float())
    row: dict[str, object] = {
        "size": size,
        "channels_in": 2 * c,
        "max_error_vs_fp32": float((gate.float() - want_gate).abs().max()),
        "max_mean_error_vs_fp32": float((mean - want_mean).abs().max()),
        "max_rolling_mean_error_vs_fp32": float((rolling_mean - want_mean).abs().max()),
        "max_abs": float(want_gate.abs().max()),
        "unfused_ms": triton.testing.do_bench(lambda: unfused(x, w, b)),
        "shifted_ms": triton.testing.do_bench(lambda: shifted(x, w, b)),
        "max_shifted_error_vs_fp32": float((shifted(x, w, b)[0].float() - want_gate).abs().max()),
        "default_blocks": str(block_sizes(size, size, c)),
        "default_rolling_blocks": str(block_sizes(size, size, c, rolling=True)),
    }
    times, errors = time_kernel(x, w, b, want_gate, [block_sizes(size, size, c), *VARIANTS])
    rolling_variants = [block_sizes(size, size, c, True), *ROLLING_VARIANTS]
    rolling, rolling_errors = time_kernel(x, w, b, want_gate, rolling_variants)
    row["tuned_ms"] = triton.testing.do_bench(lambda: dwconv_gate_triton(x, w, b))
    row["tuned_choice"] = {"form": "rolling" if chosen.rolling else "rows", "blocks": str(chosen)}
    row["tuned_max_error_vs_fp32"] = float((tuned_gate.float() - want_gate).abs().max())
    row["tuned_max_mean_error_vs_fp32"] = float((tuned_mean - want_mean).abs().max())
    row["kernel_ms"], row["kernel_max_error_vs_fp32"] = times, errors
    row["rolling_kernel_ms"], row["rolling_kernel_max_error_vs_fp32"] = rolling, rolling_errors
    least_bytes = x.numel() * 2 * 3 // 2  # read 2C channels, write C, bf16
    row["best_kernel_gb_per_s"] = round(least_bytes / min(times.values()) / 1e6, 1)
    row["best_rolling_kernel_gb_per_s"] = round(least_bytes / min(rolling.values()) / 1e6, 1)
    row["shifted_gb_per_s"] = round(least_bytes / row["shifted_ms"] / 1e6, 1)
    return row


def level_arguments(description: str, default_json: str) -> argparse.Namespace:
    """The per-level scripts' command line: batch, size, width, where the JSON goes."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--json", default=default_json)
    return ap.parse_args()


def run_levels(args: argparse.Namespace, measure: Callable[[int, int], dict[str, object]]) -> None:
    """``measure(size, channels)`` at each level of NAFNet at ``args.width``, from
    ``args.size`` down to 32 pixels (the image halved, the channels doubled each level)."""
    rows = []
    size, c = args.size, args.width
    while size >= 32:
        rows.append(measure(size, c))
        print(rows[-1], flush=True)
        # After every level: a GPU call that runs out of time keeps the levels done.
        write_json(args.json, {"batch": args.batch, "dtype": "bf16", "levels": rows})
        size, c = size // 2, c * 2


def main() -> None:
    args = level_arguments(__doc__.splitlines()[0], "benchmarks/results/dwconv_gate_speed.json")
    # Static shapes: by default the second level's shape would recompile both as one dynamic
    # kernel for all levels (75 GB/s for the shifted form on an H100), unlike in the network,
    # where every block has its own static shape.
    unfused = torch.compile(dwconv_gate_reference, dynamic=False)
    shifted = torch.compile(dwconv_gate_shifted, dynamic=False)
    run_levels(args, partial(measure_level, args.batch, unfused=unfused, shifted=shifted))


if __name__ == "__main__":
    main()
