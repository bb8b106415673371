"""The Triton kernel behind :func:`denoise.fused.block_tail.block_tail` (imports Triton).

Everything of a NAFNet block after its depthwise convolution is per pixel: the channel
attention's scaling, a 1x1 convolution, the first residual, LayerNorm, a 1x1 convolution to
``2C``, SimpleGate, a 1x1 convolution back to ``C`` and the second residual. In PyTorch that
is three GEMMs and the element-wise kernels between them, about 17 passes over a ``C``-channel
tensor (a ``2C`` one counts twice); one program here loads ``BLOCK_P`` pixels of the gated
input and of the block's input, keeps every intermediate in registers (FP32 sums, bf16 or
FP32 matrix products on the tensor cores) and writes the output: 3 passes.

The weights (``C x C``, ``2C x C`` and ``C x C``, a few tens of kilobytes at the widths it is
meant for) are read by every program, from L2 after the first. The hidden ``2C`` channels are
made ``BLOCK_K`` at a time and go straight into the last product, so registers hold three
``BLOCK_P x C`` FP32 tiles (the first residual, the output sums, and the normalised tile in
the input dtype) whatever the width. Runs on CUDA, and on CPU tensors under
``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl


@triton.jit
def _block_tail_kernel(
    x_ptr,
    att_ptr,
    inp_ptr,
    out_ptr,
    w3_ptr,
    b3_ptr,
    w4_ptr,
    b4_ptr,
    w5_ptr,
    b5_ptr,
    P,
    HW,
    eps,
    C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program: BLOCK_P pixels (rows of C channels; they may span two images) x all C.
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_ok = (rows < P)[:, None]
    image = (rows // HW)[:, None]
    rows = rows.to(tl.int64)[:, None] * C
    cs = tl.arange(0, C)
    dtype = out_ptr.dtype.element_ty

    # y = inp + conv3(x * attention): the input channels BLOCK_K at a time. The weights are
    # (out, in) row-major, as nn.Linear keeps them; loaded transposed for ``a @ w.T``.
    y = tl.zeros((BLOCK_P, C), dtype=tl.float32)
    for k0 in tl.static_range(0, C, BLOCK_K):
        ks = (k0 + tl.arange(0, BLOCK_K))[None, :]
        x = tl.load(x_ptr + rows + ks, mask=row_ok, other=0.0).to(tl.float32)
        att = tl.load(att_ptr + image * C + ks, mask=row_ok, other=0.0).to(tl.float32)
        w3 = tl.load(w3_ptr + cs[None, :] * C + ks.trans())  # [BLOCK_K, C]
        y = tl.dot((x * att).to(dtype), w3, y, input_precision=PRECISION)
    inp = tl.load(inp_ptr + rows + cs[None, :], mask=row_ok, other=0.0).to(tl.float32)
    y += inp + tl.load(b3_ptr + cs).to(tl.float32)[None, :]

    # LayerNorm over the channels, in FP32 (its affine is folded into w4 and b4)
    centred = y - (tl.sum(y, axis=1) / C)[:, None]
    variance = tl.sum(centred * centred, axis=1) / C
    normed = (centred * tl.rsqrt(variance + eps)[:, None]).to(dtype)

    # out = y + conv5(gate(conv4(normed))): the 2C hidden channels made BLOCK_K pairs at a time
    out = y + tl.load(b5_ptr + cs).to(tl.float32)[None, :]
    for j0 in tl.static_range(0, C, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        w4a = tl.load(w4_ptr + js[None, :] * C + cs[:, None])  # [C, BLOCK_K]
        w4b = tl.load(w4_ptr + (js[None, :] + C) * C + cs[:, None])
        first = tl.dot(normed, w4a, input_precision=PRECISION)
        first += tl.load(b4_ptr + js).to(tl.float32)[None, :]
        second = tl.dot(normed, w4b, input_precision=PRECISION)
        second += tl.load(b4_ptr + js + C).to(tl.float32)[None, :]
        w5 = tl.load(w5_ptr + cs[None, :] * C + js[:, None])  # [BLOCK_K, C]
        out = tl.dot((first * second).to(dtype), w5, out, input_precision=PRECISION)
    tl.store(out_ptr + rows + cs[None, :], out.to(dtype), mask=row_ok)


class TailBlocks(NamedTuple):
    """One launch configuration: pixels per program, the channel step, warps."""

    pixels: int  # a power of two, at least 16 (tl.dot's smallest tile)
    step: int  # BLOCK_K: a power of two from 16 up to the width
    warps: int

    def __str__(self) -> str:
        return f"{self.pixels}x{self.step}x{self.warps}"

    def constexprs(self) -> dict[str, int]:
        return {"BLOCK_P": self.pixels, "BLOCK_K": self.step}

    def fits(self, channels: int) -> bool:
        """Whether the blocks suit a width: a step within it, and at most 64 values of each
        ``BLOCK_P x C`` tile per thread (32 with a step of 64, whose weight slices take more
        registers). Compiled for an H100, every such configuration from 32 to 128 channels
        keeps its values in registers; the ones past the bound spill
        (``benchmarks/results/triton_kernel_resources.json``)."""
        per_thread = self.pixels * channels // (32 * self.warps)
        return self.step <= channels and per_thread <= (64 if self.step <= 32 else 32)


def supports(channels: int) -> bool:
    """Whether the kernel takes a width: a power of two (``tl.arange``), at least 16 (the
    smallest ``tl.dot``)."""
    return channels >= 16 and channels & (channels - 1) == 0


def tail_block_sizes(channels: int) -> TailBlocks:
    """The default: 4096 values of a tile (32 per thread of 4 warps), at least 16 pixels, the
    channel step at most 32, so each hidden slice is two 32-wide products."""
    return TailBlocks(max(16, min(128, 4096 // channels)), min(32, channels), 4)


# What Triton's autotuner times at each new (pixels, width), beside the width's default: the
# ones that fit the width. Memory-bound as the operation is, larger tiles read the weights
# fewer times; smaller ones hide latency with more programs.
TUNING_CANDIDATES: tuple[TailBlocks, ...] = (
    TailBlocks(256, 32, 8),
    TailBlocks(256, 32, 4),
    TailBlocks(128, 32, 8),
    TailBlocks(128, 32, 4),
    TailBlocks(64, 32, 4),
    TailBlocks(64, 64, 4),
    TailBlocks(32, 32, 4),
    TailBlocks(16, 64, 4),
)


def tail_tuning_candidates(channels: int) -> list[TailBlocks]:
    """The width's default, then the :data:`TUNING_CANDIDATES` that fit it."""
    fitting = [b for b in TUNING_CANDIDATES if b.fits(channels)]
    return list(dict.fromkeys([tail_block_sizes(channels), *fitting]))


def _config(blocks: TailBlocks) -> triton.Config:
    return triton.Config(blocks.constexprs(), num_warps=blocks.warps)


def _width_candidates(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
    """The autotuner's pruning hook: the candidates of the width at hand."""
    return [_config(b) for b in tail_tuning_candidates(kwargs["C"])]


# Tuned once per process and (pixels, width, dtypes). The first call at a shape synchronises
# and allocates: not inside a CUDA graph's capture.
_tuned_kernel = triton.autotune(
    configs=[_config(b) for b in TUNING_CANDIDATES],
    key=["P", "C"],
    prune_configs_by={"early_config_prune": _width_candidates},
)(_block_tail_kernel)


def tuned_tail_blocks() -> TailBlocks:
    """The blocks the last tuned call ran, for a report."""
    config = _tuned_kernel.best_config
    return TailBlocks(config.kwargs["BLOCK_P"], config.kwargs["BLOCK_K"], config.num_warps)


def block_tail_triton(
    x: torch.Tensor,
    attention: torch.Tensor,
    inp: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    eps: float,
    blocks: TailBlocks | None = None,
) -> torch.Tensor:
    """``x`` (the gate) and ``inp`` (the block's input) contiguous NHWC (N, H, W, C);
    ``attention`` (N, C); ``weights`` ``(w3, b3, w4, b4, w5, b5)`` as
    :class:`~denoise.fused.nafnet.FusedNAFBlock` holds them, contiguous.

    Runs ``blocks`` if given; without, the fastest of the width's candidates, timed by
    Triton's autotuner the first time it sees the shape.
    """
    n, h, w, c = x.shape
    if not supports(c):
        raise ValueError(f"the block-tail kernel needs a power-of-two width >= 16, not {c}")
    out = torch.empty_like(inp)
    pixels = n * h * w
    # FP32 stays FP32 (no TF32) on the tensor cores, like the rest of an FP32 path
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    args = (x, attention, inp, out, *weights, pixels, h * w, eps)
    if blocks is None:

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (triton.cdiv(pixels, meta["BLOCK_P"]),)

        _tuned_kernel[grid](*args, C=c, PRECISION=precision)
    else:
        _block_tail_kernel[(triton.cdiv(pixels, blocks.pixels),)](
            *args, C=c, PRECISION=precision, **blocks.constexprs(), num_warps=blocks.warps
        )
    return out
