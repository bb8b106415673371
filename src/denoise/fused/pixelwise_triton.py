"""The Triton kernels behind :mod:`denoise.fused.pixelwise` (imports Triton).

Both work a tile of ``BLOCK_P`` pixels (NHWC rows of ``C`` channels) at a time, with every
intermediate in registers: FP32 sums, matrix products in the input dtype on the tensor cores
(bf16 or fp16 in the network; FP32 inputs run too, in full FP32, for the interpreter's checks).

- ``_block_head_kernel``: LayerNorm and the 1x1 convolution to ``2C`` that open a NAFNet
  block: read ``C`` channels, write ``2C`` (3 passes over a ``C``-channel tensor, against 5
  for LayerNorm's kernel and then cuBLAS).
- ``_block_tail_kernel``: everything after the depthwise convolution: the channel attention's
  scaling, a 1x1 convolution, the first residual, LayerNorm, a 1x1 convolution to ``2C``,
  SimpleGate, a 1x1 convolution back to ``C`` and the second residual. In PyTorch that is
  three GEMMs and the element-wise kernels between them, about 17 passes; here 3 (read the
  gate and the block's input, write the output). The hidden ``2C`` channels are made
  ``BLOCK_K`` at a time and go straight into the last product, so registers hold three
  ``BLOCK_P x C`` tiles (the first residual, the output sums, the normalised tile) whatever
  the width.

Every program reads all of its block's weights (``2C x C`` for the head; ``C x C``,
``2C x C`` and ``C x C`` for the tail), from L2 after the first. Runs on CUDA, and on CPU
tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl


@triton.jit
def _layer_norm(y, C: tl.constexpr, eps):
    """LayerNorm over the channels (axis 1) of an FP32 tile, without its affine (folded into
    the convolution after it)."""
    centred = y - (tl.sum(y, axis=1) / C)[:, None]
    variance = tl.sum(centred * centred, axis=1) / C
    return centred * tl.rsqrt(variance + eps)[:, None]


@triton.jit
def _tile_rows(P, BLOCK_P: tl.constexpr):
    """This program's pixels (row indices into the ``P`` rows) and which of them exist."""
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return rows, (rows < P)[:, None]


@triton.jit
def _block_head_kernel(
    inp_ptr,
    out_ptr,
    w1_ptr,
    b1_ptr,
    P,
    eps,
    C: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program: BLOCK_P pixels x all C channels in, x all 2C out, BLOCK_K at a time.
    rows, row_ok = _tile_rows(P, BLOCK_P)
    pixels = rows.to(tl.int64)[:, None]
    cs = tl.arange(0, C)
    dtype = out_ptr.dtype.element_ty
    inp = tl.load(inp_ptr + pixels * C + cs[None, :], mask=row_ok, other=0.0).to(tl.float32)
    normed = _layer_norm(inp, C, eps).to(dtype)
    for j0 in tl.static_range(0, 2 * C, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        w1 = tl.load(w1_ptr + js[None, :] * C + cs[:, None])  # [C, BLOCK_K]: w1 (out, in).T
        out = tl.dot(normed, w1, input_precision=PRECISION)
        out += tl.load(b1_ptr + js).to(tl.float32)[None, :]
        tl.store(out_ptr + pixels * (2 * C) + js[None, :], out.to(dtype), mask=row_ok)


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
    rows, row_ok = _tile_rows(P, BLOCK_P)
    image = (rows // HW)[:, None]
    offsets = rows.to(tl.int64)[:, None] * C  # of each pixel's first channel
    cs = tl.arange(0, C)
    dtype = out_ptr.dtype.element_ty

    # y = inp + conv3(x * attention): the input channels BLOCK_K at a time. The weights are
    # (out, in) row-major, as nn.Linear keeps them; loaded transposed for ``a @ w.T``.
    y = tl.zeros((BLOCK_P, C), dtype=tl.float32)
    for k0 in tl.static_range(0, C, BLOCK_K):
        ks = (k0 + tl.arange(0, BLOCK_K))[None, :]
        x = tl.load(x_ptr + offsets + ks, mask=row_ok, other=0.0).to(tl.float32)
        att = tl.load(att_ptr + image * C + ks, mask=row_ok, other=0.0).to(tl.float32)
        w3 = tl.load(w3_ptr + cs[None, :] * C + ks.trans())  # [BLOCK_K, C]
        y = tl.dot((x * att).to(dtype), w3, y, input_precision=PRECISION)
    inp = tl.load(inp_ptr + offsets + cs[None, :], mask=row_ok, other=0.0).to(tl.float32)
    y += inp + tl.load(b3_ptr + cs).to(tl.float32)[None, :]

    normed = _layer_norm(y, C, eps).to(dtype)

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
    tl.store(out_ptr + offsets + cs[None, :], out.to(dtype), mask=row_ok)


class PixelBlocks(NamedTuple):
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
        registers). Compiled for an H100 in bf16, every such configuration of either kernel
        from 32 to 128 channels keeps its values in registers, and the tail kernel's past the
        bound spill (``benchmarks/results/triton_kernel_resources.json``)."""
        per_thread = self.pixels * channels // (32 * self.warps)
        return self.step <= channels and per_thread <= (64 if self.step <= 32 else 32)


def supports(channels: int) -> bool:
    """Whether the kernel takes a width: a power of two (``tl.arange``), at least 16 (the
    smallest ``tl.dot``)."""
    return channels >= 16 and channels & (channels - 1) == 0


def default_blocks(channels: int) -> PixelBlocks:
    """The default: 4096 values of a tile (32 per thread of 4 warps), at least 16 pixels, the
    channel step at most 32, so each hidden slice is two 32-wide products."""
    return PixelBlocks(max(16, min(128, 4096 // channels)), min(32, channels), 4)


# What Triton's autotuner times at each new (pixels, width), beside the width's default: the
# ones that fit the width. Memory-bound as the operation is, larger tiles read the weights
# fewer times; smaller ones hide latency with more programs.
TUNING_CANDIDATES: tuple[PixelBlocks, ...] = (
    PixelBlocks(256, 32, 8),
    PixelBlocks(256, 32, 4),
    PixelBlocks(128, 32, 8),
    PixelBlocks(128, 32, 4),
    PixelBlocks(64, 32, 4),
    PixelBlocks(64, 64, 4),
    PixelBlocks(32, 32, 4),
    PixelBlocks(16, 64, 4),
)


def tuning_candidates(channels: int) -> list[PixelBlocks]:
    """The width's default, then the :data:`TUNING_CANDIDATES` that fit it."""
    fitting = [b for b in TUNING_CANDIDATES if b.fits(channels)]
    return list(dict.fromkeys([default_blocks(channels), *fitting]))


def _config(blocks: PixelBlocks) -> triton.Config:
    return triton.Config(blocks.constexprs(), num_warps=blocks.warps)


def _width_candidates(
    configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any
) -> list[triton.Config]:
    """The autotuner's pruning hook: the candidates of the width at hand."""
    return [_config(b) for b in tuning_candidates(kwargs["C"])]


# Tuned once per process, kernel and (pixels, width, dtypes). The first call at a shape
# synchronises and allocates: not inside a CUDA graph's capture.
_KERNELS = {"head": _block_head_kernel, "tail": _block_tail_kernel}
_tuned: dict[str, Any] = {
    name: triton.autotune(
        configs=[_config(b) for b in TUNING_CANDIDATES],
        key=["P", "C"],
        prune_configs_by={"early_config_prune": _width_candidates},
    )(kernel)
    for name, kernel in _KERNELS.items()
}


def tuned_blocks(kernel: str) -> PixelBlocks:
    """The blocks the last tuned call of ``kernel`` (``"head"`` or ``"tail"``) ran."""
    config = _tuned[kernel].best_config
    return PixelBlocks(config.kwargs["BLOCK_P"], config.kwargs["BLOCK_K"], config.num_warps)


def _launch(
    kernel: str,
    args: tuple[Any, ...],
    pixels: int,
    c: int,
    blocks: PixelBlocks | None,
) -> None:
    """Launch ``kernel`` over ``pixels`` rows of width ``c``: at ``blocks``, or tuned. Every
    tensor in ``args`` must have one dtype (the kernels multiply them together)."""
    if not supports(c):
        raise ValueError(f"the block-{kernel} kernel needs a power-of-two width >= 16, not {c}")
    if blocks is not None and not (16 <= blocks.step <= c and blocks.pixels >= 16):
        raise ValueError(f"blocks {blocks} do not fit width {c} (16 <= step <= width)")
    dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
    if len(dtypes) != 1:
        raise ValueError(
            f"the block-{kernel} kernel needs one dtype, not {sorted(map(str, dtypes))}"
        )
    # FP32 products in full FP32 (no TF32), like the rest of an FP32 path; the setting has no
    # effect on bf16 and fp16 products.
    precision = "ieee" if dtypes == {torch.float32} else "tf32"
    constexprs = {"C": c, "PRECISION": precision}
    if blocks is None:

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (triton.cdiv(pixels, meta["BLOCK_P"]),)

        _tuned[kernel][grid](*args, **constexprs)
    else:
        _KERNELS[kernel][(triton.cdiv(pixels, blocks.pixels),)](
            *args, **constexprs, **blocks.constexprs(), num_warps=blocks.warps
        )


def block_head_triton(
    inp: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    eps: float,
    blocks: PixelBlocks | None = None,
) -> torch.Tensor:
    """``inp`` contiguous NHWC (N, H, W, C); ``w1`` (2C, C) and ``b1`` (2C,) contiguous, with
    LayerNorm's affine folded in. Returns (N, H, W, 2C) in ``inp``'s dtype. Runs ``blocks`` if
    given; without, the fastest of the width's candidates, timed by Triton's autotuner the
    first time it sees the shape."""
    n, h, w, c = inp.shape
    out = inp.new_empty((n, h, w, 2 * c))
    _launch("head", (inp, out, w1, b1, n * h * w, eps), n * h * w, c, blocks)
    return out


def block_tail_triton(
    x: torch.Tensor,
    attention: torch.Tensor,
    inp: torch.Tensor,
    weights: tuple[torch.Tensor, ...],
    eps: float,
    blocks: PixelBlocks | None = None,
) -> torch.Tensor:
    """``x`` (the gate) and ``inp`` (the block's input) contiguous NHWC (N, H, W, C);
    ``attention`` (N, C); ``weights`` ``(w3, b3, w4, b4, w5, b5)`` as
    :class:`~denoise.fused.nafnet.FusedNAFBlock` holds them, contiguous. Runs ``blocks`` as
    :func:`block_head_triton` does."""
    n, h, w, c = x.shape
    out = torch.empty_like(inp)
    pixels = n * h * w
    args = (x, attention, inp, out, *weights, pixels, h * w, eps)
    _launch("tail", args, pixels, c, blocks)
    return out
