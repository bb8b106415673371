"""PSNR and SSIM: the project's one definition.

Scores are computed on what a user sees: the output clamped to [0, 1], quantised to uint8,
scored per image, then averaged over images (never pooled MSE over a set). PSNR agrees with
skimage.metrics; SSIM is the papers' 3-D form, which scikit-image does not offer (see below).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter


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


# SSIM as the SIDD benchmark's MATLAB script (``ssim`` on the RGB array) and NAFNet's code
# (BasicSR's ``calculate_ssim`` with ``ssim3d``) compute it, so figures compare with the papers':
# one Gaussian window of sigma 1.5 and 11 samples a side across height, width *and* colour,
# edges replicated, the mean of the whole map. Scoring each channel on its own (scikit-image's
# ``channel_axis``, MMagic) gives other, lower numbers (0.925 against the paper's 0.961 for
# NAFNet on SIDD, as MMagic's model card reports).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5

#: Decimals of a score written to JSON: rounded so the bytes do not depend on float summation
#: order (and stay the same on a re-run).
SCORE_DECIMALS = 4


def _gaussian(img: np.ndarray) -> np.ndarray:
    return gaussian_filter(img, SSIM_SIGMA, mode="nearest", radius=SSIM_RADIUS)


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM between two uint8 HWC images, the papers' 3-D Gaussian form (see above)."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {target.shape}")
    if pred.dtype != np.uint8 or target.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {pred.dtype} and {target.dtype}")
    x, y = pred.astype(np.float64), target.astype(np.float64)
    mu_x, mu_y = _gaussian(x), _gaussian(y)
    var_x = _gaussian(x * x) - mu_x * mu_x
    var_y = _gaussian(y * y) - mu_y * mu_y
    cov = _gaussian(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255.0) ** 2, (0.03 * 255.0) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


def psnr_batch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of NCHW float tensors after clamp and uint8 quantisation.

    The differentiable-free fast path used during validation; equals :func:`psnr` per image.
    """
    p = torch.round(pred.detach().clamp(0, 1) * 255.0)
    t = torch.round(target.detach().clamp(0, 1) * 255.0)
    mse = ((p - t) ** 2).flatten(1).mean(1).double()
    return 10.0 * torch.log10(255.0**2 / mse)
