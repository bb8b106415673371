"""PSNR and SSIM: the project's one definition.

Scores are computed on what a user sees: the output clamped to [0, 1], quantised to uint8,
scored per image, then averaged over images (never pooled MSE over a set).
skimage.metrics is the reference implementation these agree with.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity


def to_uint8(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """Clamp a float image in [0, 1] (HWC numpy or CHW tensor) and quantise it to HWC uint8."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy().transpose(1, 2, 0)  # tensors are CHW
    if img.dtype == np.uint8:
        return img
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_batch(img: np.ndarray) -> np.ndarray:
    """An HWC uint8 image as the ``(1, 3, H, W)`` float32 batch in [0, 1] that backends take."""
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32) / 255.0


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB between two uint8 images; identical images give ``inf``."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {target.shape}")
    if pred.dtype != np.uint8 or target.dtype != np.uint8:  # a float image would score nonsense
        raise ValueError(f"expected uint8 images, got {pred.dtype} and {target.dtype}")
    mse = np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


# The side of SSIM's Gaussian window: scikit-image truncates it at 3.5 sigma each way, and
# sigma is 1.5, so 2 * round(3.5 * 1.5) + 1. A smaller image has no SSIM.
SSIM_WINDOW = 11


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM between two uint8 HWC images (Gaussian window, as in the SIDD/NAFNet papers)."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {target.shape}")
    if min(pred.shape[:2]) < SSIM_WINDOW:
        h, w = pred.shape[:2]
        raise ValueError(
            f"{w}x{h} is smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window: no SSIM for it"
        )
    return float(
        structural_similarity(
            pred,
            target,
            data_range=255,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
    )


def psnr_batch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of NCHW float tensors after clamp and uint8 quantisation.

    The differentiable-free fast path used during validation; equals :func:`psnr` per image.
    """
    p = torch.round(pred.detach().clamp(0, 1) * 255.0)
    t = torch.round(target.detach().clamp(0, 1) * 255.0)
    mse = ((p - t) ** 2).flatten(1).mean(1).double()
    return 10.0 * torch.log10(255.0**2 / mse)
