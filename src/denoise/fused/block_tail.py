"""The rest of a NAFNet block after its depthwise convolution, as one operation.

``block_tail(x, attention, inp, weights, eps)`` takes the gate ``x`` and the block's input
``inp`` (NHWC, ``C`` channels), the channel attention ``attention`` (one scale per image and
channel) and the block's folded weights ``(w3, b3, w4, b4, w5, b5)``
(:class:`~denoise.fused.nafnet.FusedNAFBlock`), and returns the block's output::

    y = inp + conv3(x * attention)
    out = y + conv5(SimpleGate(conv4(LayerNorm(y))))

Two forms of the same function (``how``):

- ``"triton"``: on CUDA with Triton, at the widths of :data:`KERNEL_WIDTHS`, one
  hand-written kernel (:mod:`denoise.fused.block_tail_triton`: 3 passes over
  memory instead of about 17), registered as the custom op ``denoise::block_tail`` so
  ``torch.compile`` calls it as it is. Elsewhere ``"torch"``.
- ``"torch"``: three matrix products and the element-wise work between them in PyTorch, which
  inductor is free to fuse (the attention folded into the first product's per-image weights,
  so the scaled tensor is never written).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from denoise.fused.dwconv_gate import HAS_TRITON

TailForm = Literal["triton", "torch"]
TAIL_FORMS: tuple[TailForm, ...] = ("triton", "torch")
TailWeights = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]
# The widths the ``"triton"`` form sends to the kernel (it takes any power of two from 16).
# Every program reads all the block's weights (8 C^2 bytes in bf16) for its pixels, against
# 6 C bytes of activations per pixel, so the weights' share grows with the width; the deeper
# levels of NAFNet-w32 (256 and 512 channels, small images) stay with cuBLAS until
# ``benchmarks/block_tail_speed.py`` shows the kernel ahead there on a GPU.
KERNEL_WIDTHS = (16, 32, 64, 128)


def check_tail_form(how: str) -> None:
    """A ValueError unless ``how`` is one of :data:`TAIL_FORMS`."""
    if how not in TAIL_FORMS:
        raise ValueError(f"unknown block-tail form {how!r}; known: {', '.join(TAIL_FORMS)}")


def block_tail_reference(
    x: torch.Tensor, attention: torch.Tensor, inp: torch.Tensor, weights: TailWeights, eps: float
) -> torch.Tensor:
    """The PyTorch form (see the module doc)."""
    w3, b3, w4, b4, w5, b5 = weights
    n, h, w, c = inp.shape
    # conv3(x * attention): the attention scales conv3's input channels, image by image
    per_image = (w3 * attention[:, None, :]).transpose(1, 2)  # (n, c_in, c_out)
    # bmm, not baddbmm: baddbmm first copies the broadcast bias into its whole output
    y = inp + torch.bmm(x.reshape(n, h * w, c), per_image).view(n, h, w, c) + b3
    first, second = F.linear(F.layer_norm(y, (c,), eps=eps), w4, b4).chunk(2, dim=-1)
    return y + F.linear(first * second, w5, b5)


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
    from denoise.fused.block_tail_triton import block_tail_triton

    weights = tuple(t.contiguous() for t in (w3, b3, w4, b4, w5, b5))
    return block_tail_triton(x.contiguous(), attention.contiguous(), inp.contiguous(), weights, eps)


@_block_tail_op.register_fake
def _(x: torch.Tensor, attention: torch.Tensor, inp: torch.Tensor, *rest: object) -> torch.Tensor:
    return torch.empty_like(inp, memory_format=torch.contiguous_format)


def block_tail(
    x: torch.Tensor,
    attention: torch.Tensor,
    inp: torch.Tensor,
    weights: TailWeights,
    eps: float,
    *,
    how: TailForm = "triton",
) -> torch.Tensor:
    """The block's output in the form ``how`` (see the module doc)."""
    check_tail_form(how)
    if how == "triton" and x.is_cuda and HAS_TRITON and inp.shape[-1] in KERNEL_WIDTHS:
        return _block_tail_op(x, attention, inp, *weights, eps)
    return block_tail_reference(x, attention, inp, weights, eps)
