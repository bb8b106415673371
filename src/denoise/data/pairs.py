"""Noisy/clean image pairs on disk: found, checked and read (the evaluate stage, ``denoise
score``, ``denoise bench``, the deploy stages' test images).

Pair folders come in two layouts, found by :func:`find_pairs`:

    DIR/noisy/<name>.<ext> + DIR/clean/<name>.<ext>   matched by file stem (PNG, JPEG, TIFF,
                                                       BMP, WebP, PPM/PGM/PNM; other files and
                                                       subfolders are not pairs)
    DIR[/Data]/<SIDD instance>/{NOISY,GT}_SRGB_010.PNG  the SIDD layout (with ISO, phone, ...)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from denoise.data import sidd_layout
from denoise.errors import DenoiseError
from denoise.fileio import IMAGE_SUFFIXES, list_folder, read_rgb8
from denoise.photo_metadata import read_metadata

NOISY_DIR, CLEAN_DIR = "noisy", "clean"


@dataclass(frozen=True)
class Pair:
    """One noisy/clean image pair; ``instance`` is set for SIDD-layout folders."""

    name: str
    noisy: Path
    clean: Path
    instance: sidd_layout.Instance | None = None


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in list_folder(folder):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # hidden files, notes, Thumbs.db: not images to pair
        if p.stem in found:
            raise DenoiseError(
                f"{p}: same name as {found[p.stem].name}; cannot tell which one to pair"
            )
        found[p.stem] = p
    return found


def find_pairs(root: str | Path) -> list[Pair]:
    """All pairs under ``root`` (``noisy/`` + ``clean/`` folders, or the SIDD layout).

    Every noisy file needs a clean file of the same stem and vice versa; an unmatched one is a
    :class:`DenoiseError` naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DenoiseError(f"{root}: not a folder")
    noisy_dir, clean_dir = root / NOISY_DIR, root / CLEAN_DIR
    if noisy_dir.is_dir() or clean_dir.is_dir():
        for d in (noisy_dir, clean_dir):
            if not d.is_dir():
                raise DenoiseError(f"{d}: missing (expected {noisy_dir} and {clean_dir})")
        noisy, clean = _images_by_stem(noisy_dir), _images_by_stem(clean_dir)
        for stem, path in itertools.chain(noisy.items(), clean.items()):
            other = clean_dir if path.parent == noisy_dir else noisy_dir
            if stem not in (clean if other == clean_dir else noisy):
                # a file of that name of a type not read (a phone's HEIC) is the likely cause
                near = [p.name for p in list_folder(other) if p.stem == stem and p.is_file()]
                why = f" ({', '.join(near)}: not a type denoise reads)" if near else ""
                raise DenoiseError(f"{path}: no image named {stem}.* in {other}{why}")
        if not noisy:
            raise DenoiseError(f"{noisy_dir}: no images")
        return [Pair(stem, noisy[stem], clean[stem]) for stem in sorted(noisy)]
    if sidd_layout.find_data_dir(root) is None:
        raise DenoiseError(
            f"{root}: no pairs found (expected {root}/{NOISY_DIR}/ and "
            f"{root}/{CLEAN_DIR}/, or SIDD <instance>/ folders)"
        )
    instances = sidd_layout.list_instances(root)  # its errors (a mistyped name) as they are
    return [
        Pair(inst.name, folder / sidd_layout.NOISY_NAME, folder / sidd_layout.GT_NAME, inst)
        for inst, folder in instances
    ]


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The pair as two uint8 RGB arrays of one size (16-bit and grey are converted)."""
    noisy, clean = read_rgb8(pair.noisy), read_rgb8(pair.clean)
    check_same_size(pair.noisy, noisy, pair.clean, clean)
    return noisy, clean


def check_same_size(
    noisy_path: Path, noisy: np.ndarray, clean_path: Path, clean: np.ndarray
) -> None:
    """A :class:`DenoiseError` naming both files if the pair's (upright) sizes differ."""
    if noisy.shape[:2] == clean.shape[:2]:
        return

    def size(path: Path, img: np.ndarray) -> str:
        turned = _orientation(path)  # the sizes are after it: say so, or they contradict ls
        after = f" after its EXIF orientation {turned}" if turned != 1 else ""
        return f"{img.shape[1]}x{img.shape[0]}{after}"

    raise DenoiseError(
        f"{noisy_path}: size {size(noisy_path, noisy)} differs from "
        f"{clean_path} ({size(clean_path, clean)})"
    )


def _orientation(path: Path) -> int:
    try:
        return read_metadata(path.read_bytes()).orientation
    except OSError:
        return 1


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` of ``img`` (all of a side shorter than that; all of it
    for ``size`` <= 0)."""
    if size <= 0:
        return img
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[top : top + size, left : left + size]


def read_crops(root: str | Path, count: int, crop: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, noisy, clean)`` of the first ``count`` pairs under ``root`` (all for 0),
    centre-cropped to ``crop`` (0: whole): the deploy stages' test images."""
    pairs = find_pairs(root)
    return [
        (pair.name, *(center_crop(img, crop) for img in read_pair(pair)))
        for pair in (pairs[:count] if count > 0 else pairs)
    ]
