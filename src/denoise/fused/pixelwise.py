"""The per-pixel parts of a NAFNet block, each as one operation.

A block is its depthwise 3x3 convolution (:mod:`denoise.fused.dwconv_gate`) between two runs
of per-pixel work, on NHWC tensors of ``C`` channels:

- ``block_head(inp, w1, b1, eps)``: LayerNorm, then the 1x1 convolution to ``2C`` (LayerNorm's
  affine folded into ``w1`` and ``b1``).
- ``block_tail(x, attention, inp, weights, eps)``: from the gate ``x``, the channel attention
  ``attention`` (one scale per image and channel) and the block's input ``inp``, with the
  folded weights ``(w3, b3, w4, b4, w5, b5)`` (:class:`~denoise.fused.nafnet.FusedNAFBlock`),
  the block's output::

      y = inp + conv3(x * attention)
      out = y + conv5(SimpleGate(conv4(LayerNorm(y))))

Two forms of each (``how``):

- ``"triton"``: on CUDA with Triton, in bf16 or fp16 (:data:`KERNEL_DTYPES`), at the widths
  of :data:`KERNEL_WIDTHS`, one hand-written kernel (:mod:`denoise.fused.pixelwise_triton`:
  3 passes over memory instead of 5 for the head, of about 17 for the tail), registered as
  the custom ops ``denoise::block_head`` and ``denoise::block_tail`` so ``torch.compile``
  calls them as they are. Elsewhere ``"torch"``.
- ``"torch"``: the matrix products and the element-wise work between them in PyTorch, which
  inductor is free to fuse (the attention folded into the first product's per-image weights,
  so the scaled tensor is never written).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from denoise.fused.dwconv_gate import HAS_TRITON

PixelwiseForm = Literal["triton", "torch"]
PIXELWISE_FORMS: tuple[PixelwiseForm, ...] = get_args(PixelwiseForm)
TailWeights = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]
# The widths the ``"triton"`` form sends to the kernels (they take any power of two from 16).
# Every program reads all of a block's weights (8 C^2 bytes in bf16 for the tail) for its
# pixels, against 6 C bytes of activations per pixel, so the weights' share grows with the
# width. On an H100 (NAFNet-w32, batch 8, two runs: benchmarks/results/h100/pixelwise_speed.json
# and gpu_check_pixelwise.log) the kernels ran 1.4-2.2x (head) and 2.2-4.6x (tail) the
# compiled PyTorch form at 32-128 channels; at 256 the head ran 0.77-0.80x and the tail
# 1.85-2.38x, at 512 (one run) 1.12x and 0.88x, so those widths stay with cuBLAS (the tail
# alone at 256 is untried in the network).
KERNEL_WIDTHS = (16, 32, 64, 128)
# The dtypes the ``"triton"`` form sends to the kernels: their products run on the tensor
# cores. In FP32 (``ieee`` products, no TF32) they are multiply-add loops that spill when
# compiled for an H100, so FP32 stays with cuBLAS.
KERNEL_DTYPES = (torch.bfloat16, torch.float16)


def check_pixelwise_form(how: str) -> None:
    """A ValueError unless ``how`` is one of :data:`PIXELWISE_FORMS`."""
    if how not in PIXELWISE_FORMS:
        known = ", ".join(PIXELWISE_FORMS)
        raise ValueError(f"unknown per-pixel form {how!r}; known: {known}")


def _kernel_takes(how: PixelwiseForm, inp: torch.Tensor) -> bool:
    """Whether the ``"triton"`` form runs the kernel for ``inp`` (see the module doc)."""
    check_pixelwise_form(how)
    return (
        how == "triton"
        and inp.is_cuda
        and HAS_TRITON
        and inp.dtype in KERNEL_DTYPES
        and inp.shape[-1] in KERNEL_WIDTHS
    )


def _cast(tensors: tuple[torch.Tensor, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``tensors`` in ``dtype``: under autocast the weights stay FP32 while the activations
    are bf16, and a custom op is not cast for it (a no-op when they already match)."""
    return tuple(t.to(dtype) for t in tensors)


def block_head_reference(
    inp: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, eps: float
) -> torch.Tensor:
    """The PyTorch form of :func:`block_head`."""
    return F.linear(F.layer_norm(inp, (inp.shape[-1],), eps=eps), w1, b1)


def block_tail_reference(
    x: torch.Tensor, attention: torch.Tensor, inp: torch.Tensor, weights: TailWeights, eps: float
) -> torch.Tensor:
    """The PyTorch form of :func:`block_tail`."""
    w3, b3, w4, b4, w5, b5 = weights
    n, h, w, c = inp.shape
    # conv3(x * attention): the attention scales conv3's input channels, image by image
    per_image = (w3 * attention[:, None, :]).transpose(1, 2)  # (n, c_in, c_out)
    # bmm, not baddbmm: baddbmm first copies the broadcast bias into its whole output
    y = inp + torch.bmm(x.reshape(n, h * w, c), per_image).view(n, h, w, c) + b3
    first, second = block_head_reference(y, w4, b4, eps).chunk(2, dim=-1)
    return y + F.linear(first * second, w5, b5)


@torch.library.custom_op("denoise::block_head", mutates_args=())
def _block_head_op(
    inp: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, eps: float
) -> torch.Tensor:
    from denoise.fused.pixelwise_triton import block_head_triton

    return block_head_triton(inp.contiguous(), w1.contiguous(), b1.contiguous(), eps)


@_block_head_op.register_fake
def _(inp: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, eps: float) -> torch.Tensor:
    return inp.new_empty((*inp.shape[:-1], w1.shape[0]))


@torch.library.custom_op("denoise::block_tail", mutates_args=())
def _block_tail_op(
    x: torch.Tensor,
    attention: torch.Tensor,
    inp: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    w4: torch.Tensor,
    b4: torch.Tensor,
    w5: torch.Tensor,
    b5: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    from denoise.fused.pixelwise_triton import block_tail_triton

    weights = tuple(t.contiguous() for t in (w3, b3, w4, b4, w5, b5))
    return block_tail_triton(x.contiguous(), attention.contiguous(), inp.contiguous(), weights, eps)


@_block_tail_op.register_fake
def _(
    x: torch.Tensor, attention: torch.Tensor, inp: torch.Tensor, *weights_and_eps: object
) -> torch.Tensor:
    return torch.empty_like(inp, memory_format=torch.contiguous_format)


def block_head(
    inp: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    eps: float,
    *,
    how: PixelwiseForm = "triton",
) -> torch.Tensor:
    """The block's LayerNorm and first 1x1 convolution in the form ``how`` (module doc)."""
    if _kernel_takes(how, inp):
        return _block_head_op(inp, *_cast((w1, b1), inp.dtype), eps)
    return block_head_reference(inp, w1, b1, eps)


def block_tail(
    x: torch.Tensor,
    attention: torch.Tensor,
    inp: torch.Tensor,
    weights: TailWeights,
    eps: float,
    *,
    how: PixelwiseForm = "triton",
) -> torch.Tensor:
    """The block's output in the form ``how`` (see the module doc)."""
    if _kernel_takes(how, inp):
        return _block_tail_op(*_cast((x, attention, inp, *weights), inp.dtype), eps)
    return block_tail_reference(x, attention, inp, weights, eps)
