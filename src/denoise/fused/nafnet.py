"""NAFNet rewritten for inference: the same function, fewer passes over memory.

NAFNet's activations are large (a 512x512 batch of 8 at width 32 is 134 MB per tensor in bf16)
and its arithmetic small, so on a GPU it is bound by how often each block reads and writes them.
:func:`fuse_nafnet` turns a trained :class:`~denoise.models.nafnet.NAFNet` into
:class:`FusedNAFNet`, which computes the same output (up to rounding) with fewer such passes:

- The blocks work on NHWC tensors, so LayerNorm normalises the last axis (no permutes) and the
  1x1 convolutions are matrix products.
- LayerNorm's affine parameters are folded into the 1x1 convolution after it, and ``beta`` and
  ``gamma`` into the one before them.
- The depthwise 3x3 convolution, SimpleGate and the channel mean for the attention are one
  operation (:mod:`denoise.fused.dwconv_gate`: a single Triton kernel on CUDA, the
  convolution followed by the gate, or nine shifted taps that inductor fuses with the gate).
- The per-pixel work before it (LayerNorm and a 1x1 convolution) is one operation, and the
  per-pixel work after it (the channel attention ``x * s``, three 1x1 convolutions,
  LayerNorm, SimpleGate, both residuals) another (:mod:`denoise.fused.pixelwise`: a single
  Triton kernel each on CUDA at the widths they are meant for, or PyTorch with the attention
  folded into per-image weights of the convolution that follows, so the scaled tensor is
  never written).

The convolutions between levels (intro, down-, up-sampling, ending) are left as they are.

Measured on an H100 at 512x512, batch 8, compiled in bf16 (README): with the Triton kernel's
row form at fixed block sizes (before it was tuned per level) a third of the GPU memory of the
compiled cast model but 0.94x its speed (that kernel was slower than cuDNN's depthwise
convolution); with ``dwconv="conv"`` 1.02x its speed and as much memory; with ``"shifted"``
0.88x.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from denoise.fused.dwconv_gate import DwconvForm, check_dwconv_form, dwconv_gate
from denoise.fused.pixelwise import PixelwiseForm, block_head, block_tail, check_pixelwise_form
from denoise.models.nafnet import LayerNorm2d, NAFBlock, NAFNet


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


def _folded_norm(norm: LayerNorm2d, conv: nn.Conv2d) -> tuple[nn.Parameter, nn.Parameter]:
    """(weight, bias) of ``conv(norm(x))`` as a linear map of the un-scaled normalised ``x``."""
    w = conv.weight[:, :, 0, 0]
    return _frozen(w * norm.weight), _frozen(conv.bias + w @ norm.bias)


def _scaled(conv: nn.Conv2d, scale: torch.Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """(weight, bias) of ``conv(x) * scale`` for a 1x1 ``conv`` and a per-channel ``scale``."""
    s = scale.reshape(-1)
    return _frozen(conv.weight[:, :, 0, 0] * s[:, None]), _frozen(conv.bias * s)


class FusedNAFBlock(nn.Module):
    """One :class:`NAFBlock` on NHWC tensors, its parameters folded (see the module doc)."""

    def __init__(
        self, block: NAFBlock, dwconv: DwconvForm = "triton", pixelwise: PixelwiseForm = "triton"
    ) -> None:
        super().__init__()
        self.dwconv = dwconv
        self.pixelwise = pixelwise
        self.eps = block.norm1.eps
        self.w1, self.b1 = _folded_norm(block.norm1, block.conv1)
        self.w_dw = _frozen(block.conv2.weight.reshape(block.conv2.out_channels, 9))
        self.b_dw = _frozen(block.conv2.bias)
        self.w_sca = _frozen(block.sca[1].weight[:, :, 0, 0])
        self.b_sca = _frozen(block.sca[1].bias)
        self.w3, self.b3 = _scaled(block.conv3, block.beta)
        self.w4, self.b4 = _folded_norm(block.norm2, block.conv4)
        self.w5, self.b5 = _scaled(block.conv5, block.gamma)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = block_head(inp, self.w1, self.b1, self.eps, how=self.pixelwise)
        x, mean = dwconv_gate(x, self.w_dw, self.b_dw, how=self.dwconv)
        attention = F.linear(mean.to(x.dtype), self.w_sca, self.b_sca)  # (n, c)
        weights = (self.w3, self.b3, self.w4, self.b4, self.w5, self.b5)
        return block_tail(x, attention, inp, weights, self.eps, how=self.pixelwise)


class FusedNAFNet(nn.Module):
    """:class:`NAFNet`'s forward (NCHW in and out) with :class:`FusedNAFBlock` blocks."""

    # NAFNet's own U-Net walk and zero padding (they read the modules and ``padder_size``),
    # with NHWC tensors between the blocks
    forward = NAFNet.forward
    _pad = NAFNet._pad

    def __init__(
        self, net: NAFNet, dwconv: DwconvForm = "triton", pixelwise: PixelwiseForm = "triton"
    ) -> None:
        super().__init__()
        check_dwconv_form(dwconv)
        check_pixelwise_form(pixelwise)

        def blocks(seq: nn.Sequential) -> nn.Sequential:
            return nn.Sequential(*(FusedNAFBlock(b, dwconv, pixelwise) for b in seq))

        self.intro = copy.deepcopy(net.intro)
        self.ending = copy.deepcopy(net.ending)
        self.downs = copy.deepcopy(net.downs)
        self.ups = copy.deepcopy(net.ups)
        self.encoders = nn.ModuleList(blocks(e) for e in net.encoders)
        self.middle_blks = blocks(net.middle_blks)
        self.decoders = nn.ModuleList(blocks(d) for d in net.decoders)
        self.padder_size = net.padder_size

    @staticmethod
    def _to_blocks(x: torch.Tensor) -> torch.Tensor:
        """NCHW to contiguous NHWC (free when ``x`` is channels_last)."""
        return x.permute(0, 2, 3, 1).contiguous()

    @staticmethod
    def _from_blocks(x: torch.Tensor) -> torch.Tensor:
        """NHWC to an NCHW view (channels_last strides)."""
        return x.permute(0, 3, 1, 2)


def fuse_nafnet(
    net: nn.Module, dwconv: DwconvForm = "triton", pixelwise: PixelwiseForm = "triton"
) -> FusedNAFNet:
    """The inference form of a NAFNet (a copy: ``net`` is left as it is).

    ``dwconv`` picks the form of the depthwise convolution and gate
    (:mod:`denoise.fused.dwconv_gate`), ``pixelwise`` that of the per-pixel work around it
    (:mod:`denoise.fused.pixelwise`). ``"conv"`` (cuDNN's convolution, the gate left to
    inductor) was faster than the Triton kernel's row form at its fixed block sizes on an H100
    at every level of NAFNet-w32, tied at the smallest (``benchmarks/dwconv_gate_speed.py``).
    """
    if not isinstance(net, NAFNet):
        raise TypeError(f"only a NAFNet has a fused inference form, not a {type(net).__name__}")
    with torch.no_grad():
        return FusedNAFNet(net, dwconv, pixelwise).eval().requires_grad_(False)
