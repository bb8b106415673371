"""SIDD's validation blocks: the protocol the papers report their SIDD numbers on.

The SIDD benchmark site distributes them as two MATLAB files, each holding one uint8 array of
shape ``(40, 32, 256, 256, 3)`` (32 sRGB blocks of 256x256 from each of 40 images) under a
variable named like the file::

    ValidationNoisyBlocksSrgb.mat   variable ValidationNoisyBlocksSrgb
    ValidationGtBlocksSrgb.mat      variable ValidationGtBlocksSrgb

A paper's figure (NAFNet-w32: 39.97 dB) is the mean PSNR over the 1,280 blocks, each block
denoised whole. ``denoise score --pairs DIR`` scores them when DIR holds these files (and no
``noisy/``/``clean/`` folders, which would make it ambiguous).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from denoise.errors import DenoiseError, first_line

NOISY_MAT = "ValidationNoisyBlocksSrgb.mat"
GT_MAT = "ValidationGtBlocksSrgb.mat"


def has_blocks(root: str | Path) -> bool:
    """Whether ``root`` is a folder holding either validation-block file."""
    root = Path(root)
    return root.is_dir() and any((root / name).is_file() for name in (NOISY_MAT, GT_MAT))


def _read_mat(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    if not path.is_file():
        raise DenoiseError(f"{path}: missing (the noisy and the GT block files go together)")
    variable = path.stem
    try:
        blocks = loadmat(str(path), variable_names=[variable]).get(variable)
    except NotImplementedError:  # scipy raises this for MATLAB v7.3 (HDF5) files
        raise DenoiseError(f"{path}: MATLAB v7.3 file; expected the v5 file SIDD ships") from None
    except Exception as e:  # scipy raises many types (IndexError, TypeError, ...) for a cut file
        raise DenoiseError(f"{path}: not a readable MATLAB file ({first_line(e)})") from None
    if blocks is None:
        raise DenoiseError(f"{path}: has no variable {variable!r}")
    if blocks.dtype != np.uint8 or blocks.ndim != 5 or blocks.shape[-1] != 3 or not blocks.size:
        raise DenoiseError(
            f"{path}: {variable} is {blocks.dtype} {blocks.shape}; "
            "expected uint8 (images, blocks, height, width, 3), not empty"
        )
    return blocks


def read_blocks(root: str | Path) -> tuple[int, Iterator[tuple[str, np.ndarray, np.ndarray]]]:
    """The blocks as ``(count, iterator of (name, noisy, clean))``, uint8 ``(H, W, 3)`` each.

    Both files are read and checked before anything is returned; blocks are then handed out
    one at a time (loadmat's arrays are column-major, and reshaping all of them at once would
    copy both). Names are ``<image>_<block>``, zero-based as in the arrays (``"07_31"``).
    """
    root = Path(root)
    noisy, clean = _read_mat(root / NOISY_MAT), _read_mat(root / GT_MAT)
    if noisy.shape != clean.shape:
        raise DenoiseError(
            f"{root / NOISY_MAT}: shape {noisy.shape} differs from {root / GT_MAT} ({clean.shape})"
        )
    images, per_image = noisy.shape[:2]
    blocks = (
        (f"{i:02d}_{b:02d}", np.ascontiguousarray(noisy[i, b]), np.ascontiguousarray(clean[i, b]))
        for i in range(images)
        for b in range(per_image)
    )
    return images * per_image, blocks
