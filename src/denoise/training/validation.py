"""Scoring the network on the validation patches during training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from denoise.data.patch_store import RandomCropDataset
from denoise.metrics import psnr_batch, ssim, to_uint8
from denoise.training.precision import amp_context


@dataclass
class Validation:
    psnr: float
    ssim: float
    input_psnr: float
    strip: np.ndarray  # noisy | denoised | clean of the first validation patch, HWC uint8


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: RandomCropDataset,
    indices: list[int],
    device: torch.device,
    batch: int,
    amp: str = "off",
) -> Validation:
    """Mean per-image PSNR/SSIM (clamped, uint8) of ``model`` on the given patches."""
    was_training = model.training
    model.eval()
    psnrs: list[float] = []
    ssims: list[float] = []
    inputs: list[float] = []
    strip = None
    for i in range(0, len(indices), batch):
        pairs = [dataset[j] for j in indices[i : i + batch]]
        noisy = torch.stack([p[0] for p in pairs]).to(device)
        clean = torch.stack([p[1] for p in pairs]).to(device)
        with amp_context(amp):
            out = model(noisy).float()
        psnrs += psnr_batch(out, clean).tolist()
        inputs += psnr_batch(noisy, clean).tolist()
        for o, c in zip(out, clean, strict=True):
            ssims.append(ssim(to_uint8(o), to_uint8(c)))
        if strip is None:
            strip = np.concatenate(
                [to_uint8(noisy[0]), to_uint8(out[0]), to_uint8(clean[0])], axis=1
            )
    model.train(was_training)
    assert strip is not None
    return Validation(float(np.mean(psnrs)), float(np.mean(ssims)), float(np.mean(inputs)), strip)
