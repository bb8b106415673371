"""Tiny real networks for tests: the one definition of their configs.

A freshly initialised NAFNet (and our DnCNN) is exactly the identity, which would make any
parity or tiling test pass trivially, so :func:`tiny_model` perturbs every weight.
"""

from __future__ import annotations

from pathlib import Path

import torch

from denoise.checkpoint import save_checkpoint
from denoise.models.registry import build_model

TINY = {  # complete, as params.yaml must write them
    "nafnet": {
        "img_channel": 3,
        "width": 8,
        "enc_blk_nums": [1, 1],
        "middle_blk_num": 1,
        "dec_blk_nums": [1, 1],
    },
    "dncnn": {"in_nc": 3, "out_nc": 3, "nc": 16, "nb": 5, "batch_norm": True},
}


def tiny_model(
    name: str, scale: float = 0.02, seed: int = 0, config: dict | None = None
) -> torch.nn.Module:
    """A tiny ``name`` network (or one of ``config``) in eval mode, perturbed from init so it
    changes the image."""
    torch.manual_seed(seed)
    model = build_model(name, TINY[name] if config is None else config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def save_tiny(path: Path, name: str, scale: float = 0.02) -> torch.nn.Module:
    """Save a :func:`tiny_model` as a checkpoint at ``path``; returns the model."""
    model = tiny_model(name, scale)
    save_checkpoint(path, name, TINY[name], model.state_dict())
    return model
