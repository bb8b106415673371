"""NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022).

A faithful re-implementation of megvii-research/NAFNet ``basicsr/models/archs/NAFNet_arch.py``:
the same constructor arguments and the same ``state_dict`` key names, so the official
checkpoints (weights under ``params``) load unchanged. Two deliberate differences, neither
visible in the weights:

- :class:`LayerNorm2d` is written with ``F.layer_norm`` over the channel axis of an NHWC view
  instead of a custom autograd function, so ``torch.onnx.export`` (opset >= 17) emits one
  native ``LayerNormalization`` node, which TensorRT keeps in FP32 (FP16 LayerNorm overflows).
- The ``ending`` convolution starts at zero, so together with ``beta = gamma = 0`` a freshly
  built network is exactly the identity: training starts from "no worse than the input".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from denoise.models.registry import register


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (mean/var per pixel, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps
        self.normalized_shape = (channels,)  # a constant: the ONNX graph must not read x.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SimpleGate(nn.Module):
    """Split the channels in two halves and multiply them: the nonlinearity of NAFNet."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class NAFBlock(nn.Module):
    """Norm -> 1x1 -> 3x3 depthwise -> SimpleGate -> SCA -> 1x1 (+beta), then the gated FFN
    (+gamma)."""

    def __init__(
        self, c: int, dw_expand: int = 2, ffn_expand: int = 2, drop_out_rate: float = 0.0
    ) -> None:
        super().__init__()
        dw = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw, 1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw, bias=True)
        self.conv3 = nn.Conv2d(dw // 2, c, 1, bias=True)
        # Simplified Channel Attention
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1, bias=True))
        self.sg = SimpleGate()
        ffn = c * ffn_expand
        self.conv4 = nn.Conv2d(c, ffn, 1, bias=True)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(self.norm1(inp)))
        x = self.sg(x)
        x = x * self.sca(x)
        x = self.dropout1(self.conv3(x))
        y = inp + x * self.beta
        x = self.sg(self.conv4(self.norm2(y)))
        x = self.dropout2(self.conv5(x))
        return y + x * self.gamma


@register("nafnet")
class NAFNet(nn.Module):
    """U-Net of NAFBlocks with additive skips and a global residual.

    The input is zero-padded to a multiple of ``2 ** len(enc_blk_nums)`` and the output
    cropped back, so any height and width work.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
    ) -> None:
        super().__init__()
        least = [("img_channel", img_channel, 1), ("width", width, 1)]
        least += [("middle_blk_num", middle_blk_num, 0)]
        least += [(f"enc_blk_nums[{i}]", n, 0) for i, n in enumerate(enc_blk_nums)]
        least += [(f"dec_blk_nums[{i}]", n, 0) for i, n in enumerate(dec_blk_nums)]
        for key, value, minimum in least:
            if value < minimum:
                raise ValueError(f"{key} must be >= {minimum}, got {value}")
        if len(enc_blk_nums) != len(dec_blk_nums):  # the ending would get the wrong width
            raise ValueError(
                f"enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)} "
                "need one entry per level each"
            )
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1, bias=True)
        nn.init.zeros_(self.ending.weight)
        nn.init.zeros_(self.ending.bias)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(
                nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2))
            )
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    @property
    def channels(self) -> tuple[int, int]:
        """Image channels in and out."""
        return self.intro.in_channels, self.ending.out_channels

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        """The constructor arguments that produced ``state_dict``; ``None`` if it is no NAFNet's.

        Read from the key names (blocks per level) and the intro convolution's shape (channels,
        width), so the official release's files, which carry weights only, load as they are.
        """
        intro = state_dict.get("intro.weight")
        if intro is None or intro.ndim != 4 or "ending.weight" not in state_dict:
            return None
        blocks: dict[str, dict[int, set[int]]] = {"encoders": {}, "decoders": {}}
        levels: dict[str, set[int]] = {"downs": set(), "ups": set(), "middle_blks": set()}
        for key in state_dict:
            if m := re.match(r"(encoders|decoders)\.(\d+)\.(\d+)\.", key):
                blocks[m[1]].setdefault(int(m[2]), set()).add(int(m[3]))
            elif m := re.match(r"(downs|ups|middle_blks)\.(\d+)\.", key):
                levels[m[1]].add(int(m[2]))
        return {
            "img_channel": int(intro.shape[1]),
            "width": int(intro.shape[0]),
            "middle_blk_num": len(levels["middle_blks"]),
            "enc_blk_nums": [len(blocks["encoders"].get(i, ())) for i in sorted(levels["downs"])],
            "dec_blk_nums": [len(blocks["decoders"].get(i, ())) for i in sorted(levels["ups"])],
        }

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        _, _, h, w = inp.shape
        inp = self._pad(inp)
        x = self._to_blocks(self.intro(inp))
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = self._to_blocks(down(self._from_blocks(x)))
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, skips[::-1], strict=True):
            x = decoder(self._to_blocks(up(self._from_blocks(x))) + skip)
        x = self.ending(self._from_blocks(x)) + inp
        return x[:, :, :h, :w]

    # The layout of the tensors the blocks see, from and back to the convolutions' NCHW: the
    # same here. NAFNet's inference form (denoise.fused.nafnet) shares this forward and
    # overrides the two for its NHWC blocks.
    @staticmethod
    def _to_blocks(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def _from_blocks(x: torch.Tensor) -> torch.Tensor:
        return x

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        ph = (self.padder_size - h % self.padder_size) % self.padder_size
        pw = (self.padder_size - w % self.padder_size) % self.padder_size
        return F.pad(x, (0, pw, 0, ph))  # always pad (also by 0): one traced graph for ONNX
