"""Loss, optimiser and learning-rate schedule, built from a :class:`TrainConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from denoise.training.config import TrainConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NAFNet's PSNR loss: minus the mean per-image PSNR (dB, data range 1), up to a constant.

    Per-image, then averaged, so a DDP gradient average equals the global-batch gradient.
    """
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()


LOSSES: dict[str, Loss] = {"psnr": psnr_loss, "l1": F.l1_loss, "mse": F.mse_loss}


def optimizer_step(
    loss: torch.Tensor,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> None:
    """Backward and one optimiser step; with fp16 AMP the loss is scaled and the gradients are
    unscaled before clipping (a disabled scaler passes everything through)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
}


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )


def build_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing over ``iters``, stepped once per ITERATION (not per epoch)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.iters, eta_min=cfg.eta_min
    )
