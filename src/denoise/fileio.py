"""Atomic file output and validated image input.

Every output the pipeline writes goes through a temporary sibling and an ``os.replace``, so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from denoise.errors import DenoiseError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    Works for files and folders. On an exception the temporary is removed and ``target`` is
    left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes for DVC hashes)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_rgb8(path: str | Path, *, allow_convert: bool = True) -> np.ndarray:
    """Read an image as an ``(H, W, 3)`` uint8 RGB array.

    Grey is expanded to three channels and 16-bit is rounded to 8-bit only when
    ``allow_convert`` is true; RGBA is always rejected (the alpha channel has no meaning for a
    photograph pair and dropping it silently could hide a wrong file). Every refusal is a
    :class:`DenoiseError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DenoiseError(f"{path}: file not found")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DenoiseError(f"{path}: not a readable image")
    if img.dtype == np.uint16:
        if not allow_convert:
            raise DenoiseError(f"{path}: 16-bit image, expected 8-bit RGB")
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DenoiseError(f"{path}: unsupported sample type {img.dtype}, expected 8-bit RGB")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        if not allow_convert:
            raise DenoiseError(f"{path}: greyscale image, expected 8-bit RGB")
        img = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
        return np.ascontiguousarray(img)
    if img.shape[2] == 4:
        raise DenoiseError(f"{path}: RGBA image (has an alpha channel), expected 8-bit RGB")
    if img.shape[2] != 3:
        raise DenoiseError(f"{path}: {img.shape[2]} channels, expected 8-bit RGB")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def write_rgb8(path: str | Path, img: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 RGB array atomically; the format follows the suffix."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {img.shape} {img.dtype}")
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DenoiseError(f"{path}: could not encode image")
    write_bytes_atomic(path, buf.tobytes())
