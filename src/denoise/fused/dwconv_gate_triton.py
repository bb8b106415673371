"""The Triton kernel behind :func:`denoise.fused.dwconv_gate.dwconv_gate` (imports Triton).

One pass over an NHWC tensor of ``2C`` channels: the depthwise 3x3 convolution (zero padding,
bias), SimpleGate (first half of the channels times the second half) and the per-image channel
sums of the result (for NAFNet's channel attention), in FP32, one slot per program. Unfused,
the convolution writes ``2C`` channels that the gate reads back; here they never leave the
registers. Runs on CUDA, and on CPU tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

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
):
    # One program: BLOCK_H rows (one after another) x BLOCK_W pixels x BLOCK_C channels.
    tiles_h = tl.cdiv(H, BLOCK_H)
    image = tl.program_id(0) // tiles_h
    y0 = (tl.program_id(0) % tiles_h) * BLOCK_H
    xs = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    bias1 = tl.load(b_ptr + cs, mask=c_ok, other=0.0).to(tl.float32)
    bias2 = tl.load(b_ptr + cs + C, mask=c_ok, other=0.0).to(tl.float32)
    partial = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r in range(BLOCK_H):
        y = y0 + r
        first = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32) + bias1[None, :]
        second = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32) + bias2[None, :]
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
    # Each program's own slot: no atomics, so the sums are the same on every run.
    tile = (tl.program_id(0) % tiles_h) * tl.num_programs(1) + tl.program_id(1)
    tiles = tiles_h * tl.num_programs(1)
    tl.store(sum_ptr + (image * tiles + tile) * C + cs, partial, mask=c_ok)


def block_sizes(height: int, width: int, channels: int) -> tuple[int, int, int, int]:
    """(rows, pixels along a row, channels, warps) per program: about 2048 outputs a row."""
    block_c = min(64, triton.next_power_of_2(channels))
    block_w = min(triton.next_power_of_2(width), max(16, 2048 // block_c))
    return min(8, height), block_w, block_c, 4


def dwconv_gate_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    blocks: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` contiguous NHWC (N, H, W, 2C); ``weight`` (2C, 9); ``bias`` (2C,).

    Returns the gated output (N, H, W, C) in ``x``'s dtype and its per-image channel means
    (N, C) in FP32. ``blocks`` overrides :func:`block_sizes` (the speed benchmark).
    """
    n, h, w, c2 = x.shape
    c = c2 // 2
    block_h, block_w, block_c, warps = blocks or block_sizes(h, w, c)
    grid = (n * triton.cdiv(h, block_h), triton.cdiv(w, block_w), triton.cdiv(c, block_c))
    out = torch.empty((n, h, w, c), dtype=x.dtype, device=x.device)
    sums = torch.empty((n, grid[0] // n * grid[1], c), dtype=torch.float32, device=x.device)
    _dwconv_gate_kernel[grid](
        x,
        weight,
        bias,
        out,
        sums,
        h,
        w,
        c,
        BLOCK_H=block_h,
        BLOCK_W=block_w,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return out, sums.sum(dim=1) / (h * w)
