"""The Triton kernel behind :func:`denoise.fused.dwconv_gate.dwconv_gate` (imports Triton).

One pass over an NHWC tensor of ``2C`` channels: the depthwise 3x3 convolution (zero padding,
bias), SimpleGate (first half of the channels times the second half) and the per-image channel
sums of the result (for NAFNet's channel attention), in FP32, one slot per program. Unfused,
the convolution writes ``2C`` channels that the gate reads back; here they never leave the
registers. Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).

The kernel has two forms of its row loop. ``_rows`` loads each output's nine neighbours, so
every input is loaded nine times, from the caches after the first; on an H100 it reached a
quarter of the memory bandwidth. ``_rolling_rows`` loads each input row once per horizontal
shift and keeps three rows of sums; on an H100 it ran 1.45-1.85x the row form's best at
NAFNet-w32's five levels (benchmarks/results/h100/dwconv_gate_speed_tuned.json). Which
form, and which block sizes, the network runs is measured, not assumed: called without
``blocks``, :func:`dwconv_gate_triton` has Triton's autotuner time the shape's
:func:`tuning_candidates` of both forms the first time it meets the shape, and keeps the
fastest (``benchmarks/dwconv_gate_speed.py`` times them one by one).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl


@triton.jit
def _dwconv_gate_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    sum_ptr,
    H,
    W,
    C,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ROLLING: tl.constexpr,
    STAGES: tl.constexpr,
):
    # One program: BLOCK_H rows (one after another) x BLOCK_W pixels x BLOCK_C channels.
    tiles_h = tl.cdiv(H, BLOCK_H)
    image = tl.program_id(0) // tiles_h
    y0 = (tl.program_id(0) % tiles_h) * BLOCK_H
    xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    if ROLLING:
        partial = _rolling_rows(
            x_ptr, w_ptr, b_ptr, out_ptr, H, W, C, image, y0, xs, cs, BLOCK_H, STAGES
        )
    else:
        partial = _rows(x_ptr, w_ptr, b_ptr, out_ptr, H, W, C, image, y0, xs, cs, BLOCK_H)
    # Each program's own slot: no atomics, so the sums are the same on every run.
    tile = (tl.program_id(0) % tiles_h) * tl.num_programs(1) + tl.program_id(1)
    tiles = tiles_h * tl.num_programs(1)
    tl.store(sum_ptr + (image * tiles + tile) * C + cs, partial, mask=cs < C)


@triton.jit
def _rows(x_ptr, w_ptr, b_ptr, out_ptr, H, W, C, image, y0, xs, cs, BLOCK_H: tl.constexpr):
    """The measured form: each output row loads its nine taps of each half of the channels.
    Returns the program's channel sums."""
    c_ok = cs < C
    bias1 = tl.load(b_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)
    bias2 = tl.load(b_ptr + cs + C, mask=c_ok, other=0.0).to(tl.float32)
    partial = tl.zeros(cs.shape, dtype=tl.float32)
    for r in range(BLOCK_H):
        y = y0 + r
        first = tl.zeros((xs.shape[0], cs.shape[0]), dtype=tl.float32) + bias1[None, :]
        second = tl.zeros((xs.shape[0], cs.shape[0]), dtype=tl.float32) + bias2[None, :]
        for dy in tl.static_range(3):
            yy = y + dy - 1
            y_ok = (yy >= 0) & (yy < H)
            for dx in tl.static_range(3):
                xx = xs + dx - 1
                ok = ((xx >= 0) & (xx < W) & y_ok)[:, None] & c_ok[None, :]
                pixel = (image * H + yy).to(tl.int64) * W + xx
                ptr = x_ptr + (pixel * (2 * C))[:, None] + cs[None, :]
                tap = dy * 3 + dx
                w1 = tl.load(w_ptr + cs * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
                w2 = tl.load(w_ptr + (cs + C) * 9 + tap, mask=c_ok, other=0.0).to(tl.float32)
                first += tl.load(ptr, mask=ok, other=0.0).to(tl.float32) * w1[None, :]
                second += tl.load(ptr + C, mask=ok, other=0.0).to(tl.float32) * w2[None, :]
        gated = (first * second).to(out_ptr.dtype.element_ty)
        ok = ((xs < W) & (y < H))[:, None] & c_ok[None, :]
        out = out_ptr + (((image * H + y).to(tl.int64) * W + xs) * C)[:, None] + cs[None, :]
        tl.store(out, gated, mask=ok)
        partial += tl.sum(tl.where(ok, gated.to(tl.float32), 0.0), axis=0)
    return partial


@triton.jit
def _tap_weights(w_ptr, cs, c_ok, dy: tl.constexpr):
    """One row of a 3x3 kernel (taps ``3 * dy`` .. ``3 * dy + 2``) as three [1, BLOCK_C] rows."""
    base = w_ptr + cs * 9 + dy * 3
    w0 = tl.load(base, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w1 = tl.load(base + 1, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(base + 2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    return w0, w1, w2


@triton.jit
def _shifted_row(row_ptr, xs, stride, W, ok):
    """An input row (``row_ptr``: its first pixel, [1, BLOCK_C] channels) at pixels ``xs - 1``,
    ``xs`` and ``xs + 1``, ``stride`` elements apart, zero outside the image and ``ok``."""
    in_left = (xs >= 1) & (xs <= W)  # the last program's pixels may lie past the row's end
    left = tl.load(row_ptr + ((xs - 1) * stride)[:, None], mask=ok & in_left[:, None], other=0.0)
    mid = tl.load(row_ptr + (xs * stride)[:, None], mask=ok & (xs < W)[:, None], other=0.0)
    right = tl.load(
        row_ptr + ((xs + 1) * stride)[:, None], mask=ok & (xs + 1 < W)[:, None], other=0.0
    )
    return left.to(tl.float32), mid.to(tl.float32), right.to(tl.float32)


@triton.jit
def _add_taps(acc, t0, t1, t2, w0, w1, w2):
    """``acc`` plus three taps, one at a time: written as one sum, the products were kept
    apart and the loop compiled for sm_90 needed more instructions and registers."""
    acc += t0 * w0
    acc += t1 * w1
    acc += t2 * w2
    return acc


@triton.jit
def _rolling_rows(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    H,
    W,
    C,
    image,
    y0,
    xs,
    cs,
    BLOCK_H: tl.constexpr,
    STAGES: tl.constexpr,
):
    """The candidate: each input row is read once (at three horizontal shifts) instead of once
    per output row it feeds. It adds its three rows of taps to three accumulators, for the
    output rows above, at and below it, and the one above is then complete: 6 loads per input
    row, against 18 per output row. The weights are loaded once, before the loop. STAGES > 1
    has Triton prefetch the next rows (through shared memory) while this row is summed.
    Returns the program's channel sums."""
    c_ok = cs < C
    f0, f1, f2 = _tap_weights(w_ptr, cs, c_ok, 0)
    f3, f4, f5 = _tap_weights(w_ptr, cs, c_ok, 1)
    f6, f7, f8 = _tap_weights(w_ptr, cs, c_ok, 2)
    s0, s1, s2 = _tap_weights(w_ptr + C * 9, cs, c_ok, 0)
    s3, s4, s5 = _tap_weights(w_ptr + C * 9, cs, c_ok, 1)
    s6, s7, s8 = _tap_weights(w_ptr + C * 9, cs, c_ok, 2)
    zero = tl.zeros((xs.shape[0], cs.shape[0]), dtype=tl.float32)
    bias1 = zero + tl.load(b_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    bias2 = zero + tl.load(b_ptr + cs + C, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    above1, at1, below1 = bias1, bias1, bias1
    above2, at2, below2 = bias2, bias2, bias2
    sums = zero  # summed over rows here, across pixels once at the end
    channels = cs[None, :]
    for i in tl.range(BLOCK_H + 2, num_stages=STAGES):  # input rows y0 - 1 .. y0 + BLOCK_H
        yy = y0 - 1 + i
        y_ok = (yy >= 0) & (yy < H)
        row_ptr = x_ptr + ((image * H + yy).to(tl.int64) * W) * (2 * C) + channels
        ok = y_ok & c_ok[None, :]
        a0, a1, a2 = _shifted_row(row_ptr, xs, 2 * C, W, ok)
        above1 = _add_taps(above1, a0, a1, a2, f6, f7, f8)
        at1 = _add_taps(at1, a0, a1, a2, f3, f4, f5)
        below1 = _add_taps(below1, a0, a1, a2, f0, f1, f2)
        b0, b1, b2 = _shifted_row(row_ptr + C, xs, 2 * C, W, ok)
        above2 = _add_taps(above2, b0, b1, b2, s6, s7, s8)
        at2 = _add_taps(at2, b0, b1, b2, s3, s4, s5)
        below2 = _add_taps(below2, b0, b1, b2, s0, s1, s2)
        # Output row yy - 1 now has all nine taps; rows before y0 (i < 2) are not ours.
        y = yy - 1
        gated = (above1 * above2).to(out_ptr.dtype.element_ty)
        done = ((xs < W) & (y < H) & (i >= 2))[:, None] & c_ok[None, :]
        out = out_ptr + (((image * H + y).to(tl.int64) * W + xs) * C)[:, None] + channels
        tl.store(out, gated, mask=done)
        sums += tl.where(done, gated.to(tl.float32), 0.0)
        above1, at1, below1 = at1, below1, bias1
        above2, at2, below2 = at2, below2, bias2
    return tl.sum(sums, axis=0)


class Blocks(NamedTuple):
    """What one program covers, and how it runs: one launch configuration of the kernel."""

    rows: int
    pixels: int  # along a row; a power of two
    channels: int  # a power of two
    warps: int
    stages: int = 1  # the rolling form's prefetch depth (1: none); the other ignores it
    rolling: bool = False  # the row loop's form: _rolling_rows, or _rows

    def __str__(self) -> str:
        """``rows x pixels x channels x warps``, then ``s<stages>`` if there is prefetch (the
        form is not in it: the benchmarks keep each form's sizes apart)."""
        sizes = f"{self.rows}x{self.pixels}x{self.channels}x{self.warps}"
        return sizes + (f"s{self.stages}" if self.stages > 1 else "")

    def constexprs(self) -> dict[str, int | bool]:
        """The kernel's compile-time arguments for these blocks."""
        return {
            "BLOCK_H": self.rows,
            "BLOCK_W": self.pixels,
            "BLOCK_C": self.channels,
            "ROLLING": self.rolling,
            "STAGES": self.stages if self.rolling else 1,  # the row form has no prefetch
        }

    def tiles(self, height: int, width: int) -> int:
        """Programs per image and channel block: one channel-sum slot each."""
        return _tiles(height, width, self.constexprs())


def block_sizes(height: int, width: int, channels: int, rolling: bool = False) -> Blocks:
    """About 2048 outputs a row, or 1024 and twice the rows for the rolling kernel (it holds
    three rows of sums): 8 per thread of 4 warps, with no spills at 32 channels (ptxas)."""
    block_c = min(64, triton.next_power_of_2(channels))
    outputs = 1024 if rolling else 2048
    block_w = min(triton.next_power_of_2(width), max(16, outputs // block_c))
    return Blocks(min(16 if rolling else 8, height), block_w, block_c, 4, rolling=rolling)


# What Triton's autotuner times, beside each form's block_sizes, at each new shape. The row
# form: the two block sizes that were fastest at some level of NAFNet-w32 on an H100, and one
# within 2% at the smallest (benchmarks/results/h100/dwconv_gate_speed*.json). The rolling
# form: its default and sizes with fewer registers, with and without prefetch; compiled for
# an H100, only 16x32x32x4s2 spills, 16 bytes (benchmarks/results/triton_kernel_resources.json).
# On an H100 the tuner chose the rolling form at every level of NAFNet-w32: 16x16x32x4s3 at
# the two largest, 16x16x64x4 at the others (dwconv_gate_speed_tuned.json).
TUNING_CANDIDATES: tuple[Blocks, ...] = (
    Blocks(1, 64, 32, 4),
    Blocks(8, 32, 64, 4),
    Blocks(8, 16, 128, 4),
    Blocks(16, 32, 32, 4, rolling=True),
    Blocks(16, 16, 32, 4, rolling=True),
    Blocks(16, 32, 32, 4, stages=2, rolling=True),
    Blocks(16, 16, 32, 4, stages=3, rolling=True),
    Blocks(16, 32, 32, 8, stages=3, rolling=True),
    Blocks(8, 16, 32, 4, stages=3, rolling=True),
)


def tuning_candidates(height: int, width: int, channels: int) -> list[Blocks]:
    """Both forms' :func:`block_sizes`, then the :data:`TUNING_CANDIDATES` whose rows and
    channels fit the shape (blocks mostly masked off only cost time)."""
    defaults = [block_sizes(height, width, channels, rolling) for rolling in (False, True)]
    fitting = [b for b in TUNING_CANDIDATES if b.rows <= height and b.channels <= channels]
    return list(dict.fromkeys(defaults + fitting))


def _config(blocks: Blocks) -> triton.Config:
    return triton.Config(blocks.constexprs(), num_warps=blocks.warps)


def _blocks(config: triton.Config) -> Blocks:
    """The :class:`Blocks` of a config made by :func:`_config`."""
    k = config.kwargs
    return Blocks(
        k["BLOCK_H"], k["BLOCK_W"], k["BLOCK_C"], config.num_warps, k["STAGES"], k["ROLLING"]
    )


def _shape_candidates(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
    """The autotuner's pruning hook, here to hand it the candidates of the shape at hand (it
    calls the hook only if it was given more than one config)."""
    shape = (named_args[k] for k in ("H", "W", "C"))
    return [_config(b) for b in tuning_candidates(*shape)]


# Tuned once per process and (height, width, channels, dtypes): not per batch size, so the
# first call at a shape picks the blocks for every batch. Which configuration wins can differ
# between processes when two are close, and with it the order in which the channel sums are
# added (the last bits of bf16 outputs). TRITON_CACHE_AUTOTUNING=1 keeps the choices on disk.
# The first call at a shape synchronises and allocates: not inside a CUDA graph's capture.
_tuned_kernel = triton.autotune(
    configs=[_config(b) for b in TUNING_CANDIDATES],
    key=["H", "W", "C"],
    prune_configs_by={"early_config_prune": _shape_candidates},
)(_dwconv_gate_kernel)


@functools.cache
def _most_slots(height: int, width: int, channels: int) -> int:
    """The most channel-sum slots per image any of the shape's candidates writes."""
    return max(b.tiles(height, width) for b in tuning_candidates(height, width, channels))


def _tiles(h: int, w: int, sizes: Mapping[str, Any]) -> int:
    """Programs per image and channel block at ``sizes`` (BLOCK_H, BLOCK_W)."""
    return triton.cdiv(h, sizes["BLOCK_H"]) * triton.cdiv(w, sizes["BLOCK_W"])


def _grid(n: int, h: int, w: int, c: int, sizes: Mapping[str, Any]) -> tuple[int, int, int]:
    """Programs for ``n`` images of ``h`` x ``w`` x ``c`` at ``sizes`` (BLOCK_H, _W, _C)."""
    rows, pixels, channels = (sizes[k] for k in ("BLOCK_H", "BLOCK_W", "BLOCK_C"))
    return n * triton.cdiv(h, rows), triton.cdiv(w, pixels), triton.cdiv(c, channels)


def tuned_blocks() -> Blocks:
    """The blocks the last tuned call (``dwconv_gate_triton`` without ``blocks``) ran, for a
    report: in a process that tunes from several threads, whichever launched last."""
    return _blocks(_tuned_kernel.best_config)


def dwconv_gate_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, blocks: Blocks | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` contiguous NHWC (N, H, W, 2C); ``weight`` (2C, 9); ``bias`` (2C,).

    Returns the gated output (N, H, W, C) in ``x``'s dtype and its per-image channel means
    (N, C) in FP32. Runs ``blocks`` if given; without, the fastest of the shape's
    :func:`tuning_candidates`, timed by Triton's autotuner the first time it sees the shape.
    """
    n, h, w, c2 = x.shape
    c = c2 // 2
    out = torch.empty((n, h, w, c), dtype=x.dtype, device=x.device)
    args = (x, weight, bias, out)
    if blocks is None:
        # Room for the most slots any candidate writes. The launch that runs last (the chosen
        # configuration's: the timing runs come first) fills the front; its sizes come from
        # the grid function, which every launch calls, not from the autotuner's shared state.
        sums = torch.empty(n * _most_slots(h, w, c) * c, dtype=torch.float32, device=x.device)
        launched: list[Mapping[str, Any]] = []

        def grid(meta: Mapping[str, Any]) -> tuple[int, int, int]:
            launched.append(meta)
            return _grid(n, h, w, c, meta)

        _tuned_kernel[grid](*args, sums, h, w, c)
        tiles = _tiles(h, w, launched[-1])
    else:
        tiles = blocks.tiles(h, w)
        sums = torch.empty(n * tiles * c, dtype=torch.float32, device=x.device)
        sizes = blocks.constexprs()
        _dwconv_gate_kernel[_grid(n, h, w, c, sizes)](
            *args, sums, h, w, c, **sizes, num_warps=blocks.warps
        )
    per_tile = sums[: n * tiles * c].view(n, tiles, c)
    return out, per_tile.sum(dim=1) / (h * w)
