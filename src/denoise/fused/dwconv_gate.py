"""NAFNet's depthwise 3x3 convolution, SimpleGate and channel mean as one operation.

``dwconv_gate(x, weight, bias)`` takes an NHWC tensor of ``2C`` channels and returns
``(gate, mean)``: ``gate = conv[..., :C] * conv[..., C:]`` where ``conv`` is the depthwise 3x3
convolution (zero padding) of ``x``, and ``mean`` its per-image channel means in FP32 (the
input of NAFNet's channel attention).

Three forms of the same function (``how``):

- ``"triton"``: on CUDA with Triton, one hand-written kernel
  (:mod:`denoise.fused.dwconv_gate_triton`; its form and block sizes tuned per shape at the
  first call), registered as the custom op ``denoise::dwconv_gate`` so ``torch.compile``
  calls it as it is. Elsewhere ``"conv"``.
- ``"conv"``: the depthwise convolution as a convolution (cuDNN, oneDNN), the gate and the
  mean in PyTorch, which inductor is free to fuse.
- ``"shifted"``: the convolution written as the sum of nine shifted copies of the input, each
  times one weight per channel. Eager, that is nine passes over memory; under ``torch.compile``
  inductor turns the taps, the bias and the gate into one generated kernel, with the zero
  padding as masked loads, so the ``2C``-channel convolution output is never written.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, get_args

import torch
import torch.nn.functional as F

HAS_TRITON = importlib.util.find_spec("triton") is not None

DwconvForm = Literal["triton", "conv", "shifted"]
DWCONV_FORMS: tuple[DwconvForm, ...] = get_args(DwconvForm)


def check_dwconv_form(how: str) -> None:
    """A ValueError unless ``how`` is one of :data:`DWCONV_FORMS`."""
    if how not in DWCONV_FORMS:
        raise ValueError(f"unknown depthwise form {how!r}; known: {', '.join(DWCONV_FORMS)}")


def dwconv_gate_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain PyTorch form: ``weight`` (2C, 9), ``bias`` (2C,), ``x`` NHWC (N, H, W, 2C)."""
    c2 = x.shape[-1]
    conv = F.conv2d(x.permute(0, 3, 1, 2), weight.view(c2, 1, 3, 3), bias, padding=1, groups=c2)
    first, second = conv.permute(0, 2, 3, 1).chunk(2, dim=-1)
    gate = first * second
    return gate, gate.float().mean(dim=(1, 2))


def dwconv_gate_shifted(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as :func:`dwconv_gate_reference`, the convolution as nine shifted taps.

    Accumulates in FP32 (as a convolution does) and rounds once, to ``x``'s dtype, at the gate;
    the mean is of the rounded gate, as in the other forms.
    """
    h, w = x.shape[1:3]
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))  # one zero pixel around each image (NHWC)
    weight = weight.float()
    conv = bias.float()
    for tap in range(9):
        dy, dx = divmod(tap, 3)
        conv = conv + padded[:, dy : dy + h, dx : dx + w].float() * weight[:, tap]
    first, second = conv.chunk(2, dim=-1)
    gate = (first * second).to(x.dtype)
    return gate, gate.float().mean(dim=(1, 2))


@torch.library.custom_op("denoise::dwconv_gate", mutates_args=())
def _dwconv_gate_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    from denoise.fused.dwconv_gate_triton import dwconv_gate_triton

    return dwconv_gate_triton(x.contiguous(), weight.contiguous(), bias.contiguous())


@_dwconv_gate_op.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    n, h, w, c2 = x.shape
    return x.new_empty((n, h, w, c2 // 2)), x.new_empty((n, c2 // 2), dtype=torch.float32)


def dwconv_gate(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, how: DwconvForm = "triton"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate, mean)`` of NHWC ``x`` in the form ``how`` (see the module doc)."""
    check_dwconv_form(how)
    if how == "shifted":
        return dwconv_gate_shifted(x, weight, bias)
    if how == "triton" and x.is_cuda and HAS_TRITON:
        return _dwconv_gate_op(x, weight, bias)
    return dwconv_gate_reference(x, weight, bias)
