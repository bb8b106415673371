"""NAFNet's depthwise 3x3 convolution, SimpleGate and channel mean as one operation.

``dwconv_gate(x, weight, bias)`` takes an NHWC tensor of ``2C`` channels and returns
``(gate, mean)``: ``gate = conv[..., :C] * conv[..., C:]`` where ``conv`` is the depthwise 3x3
convolution (zero padding) of ``x``, and ``mean`` its per-image channel means in FP32 (the
input of NAFNet's channel attention).

On CUDA with Triton it is one kernel (:mod:`denoise.fused.dwconv_gate_triton`), registered
as the custom op ``denoise::dwconv_gate`` so ``torch.compile`` calls it as it is. Elsewhere it
is the same computation in plain PyTorch, which inductor is free to fuse.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

HAS_TRITON = importlib.util.find_spec("triton") is not None


def dwconv_gate_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain PyTorch form: ``weight`` (2C, 9), ``bias`` (2C,), ``x`` NHWC (N, H, W, 2C)."""
    c2 = x.shape[-1]
    conv = F.conv2d(x.permute(0, 3, 1, 2), weight.view(c2, 1, 3, 3), bias, padding=1, groups=c2)
    first, second = conv.permute(0, 2, 3, 1).chunk(2, dim=-1)
    gate = first * second
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
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, triton_kernel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate, mean)`` of NHWC ``x``: the Triton kernel on CUDA (unless ``triton_kernel`` is
    False), plain PyTorch elsewhere."""
    if triton_kernel and x.is_cuda and HAS_TRITON:
        return _dwconv_gate_op(x, weight, bias)
    return dwconv_gate_reference(x, weight, bias)
