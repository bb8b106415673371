"""DnCNN (Zhang et al., "Beyond a Gaussian Denoiser", TIP 2017), laid out as KAIR's network_dncnn.

``nb`` convolution layers of ``nc`` channels: conv+ReLU, ``nb - 2`` x (conv+BN+ReLU), conv.
The network predicts the noise ``n`` and returns ``x - n``. Convolutions followed by
BatchNorm carry no bias (the BN shift replaces it, as in the paper's model), which gives
558,403 parameters for the colour model (``in_nc = out_nc = 3, nc = 64, nb = 17``); KAIR
keeps those redundant biases (559,363).
``batch_norm=False`` gives the BN-free variant (biases everywhere), which trains faster with
small batches.

Initialisation: Kaiming-normal convolutions and a zero last layer, so the freshly built
network is the identity (predicted noise 0) and training starts from the noisy input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from denoise.models.registry import register


@register("dncnn")
class DnCNN(nn.Module):
    """Residual denoiser: ``forward(x) = x - model(x)``."""

    def __init__(
        self, in_nc: int = 3, out_nc: int = 3, nc: int = 64, nb: int = 17, batch_norm: bool = True
    ) -> None:
        super().__init__()
        for key, value in (("in_nc", in_nc), ("out_nc", out_nc), ("nc", nc)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if nb < 2:
            raise ValueError(f"DnCNN needs at least 2 layers, got nb={nb}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_nc, nc, 3, padding=1, bias=True),
            nn.ReLU(inplace=True),
        ]
        for _ in range(nb - 2):
            layers.append(nn.Conv2d(nc, nc, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(nc, eps=1e-4))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(nc, out_nc, 3, padding=1, bias=True))
        self.model = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        convs = [m for m in self.model if isinstance(m, nn.Conv2d)]
        for conv in convs[:-1]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(convs[-1].weight)
        nn.init.zeros_(convs[-1].bias)

    @property
    def channels(self) -> tuple[int, int]:
        """Image channels in and out."""
        convs = [m for m in self.model if isinstance(m, nn.Conv2d)]
        return convs[0].in_channels, convs[-1].out_channels

    @staticmethod
    def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
        """The constructor arguments that produced ``state_dict``; ``None`` if it is no DnCNN's.

        KAIR releases its DnCNNs with BatchNorm merged into the convolutions (``act_mode='R'``,
        e.g. ``dncnn_color_blind.pth``: ``nb=20``): that is ``batch_norm=False`` here, with the
        same key names, so those files load as they are.
        """
        convs = sorted(
            int(m[1])
            for key, value in state_dict.items()
            if (m := re.fullmatch(r"model\.(\d+)\.weight", key)) and value.ndim == 4
        )
        if not convs or convs[0] != 0 or any(not k.startswith("model.") for k in state_dict):
            return None
        first, last = state_dict["model.0.weight"], state_dict[f"model.{convs[-1]}.weight"]
        if first.shape[1] != last.shape[0]:
            return None  # a residual x - n needs as many channels out as in (not FFDNet/SRMD)
        return {
            "in_nc": int(first.shape[1]),
            "out_nc": int(last.shape[0]),
            "nc": int(first.shape[0]),
            "nb": len(convs),
            "batch_norm": any(k.endswith(".running_mean") for k in state_dict),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.model(x)
