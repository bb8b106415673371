"""An independent SSIM for the tests: built the way NAFNet's code builds it."""

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def ssim_3d_reference(a: np.ndarray, b: np.ndarray) -> float:
    """NAFNet's ``_ssim_3d`` built its way: a Conv3d with an 11x11x11 Gaussian (outer product
    of OpenCV's 11-tap sigma-1.5 kernel) over height, width and colour, replicate padding."""
    g = torch.from_numpy(cv2.getGaussianKernel(11, 1.5)[:, 0])
    kernel = torch.einsum("i,j,k->ijk", g, g, g)[None, None]

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv3d(F.pad(v[None, None], (5,) * 6, mode="replicate"), kernel)[0, 0]

    x, y = (torch.from_numpy(i.astype(np.float64)) for i in (a, b))
    mx, my = blur(x), blur(y)
    sx, sy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sx + sy + c2))
    return float(m.mean())
