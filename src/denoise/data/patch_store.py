"""The compact patch store that training reads, and the Dataset on top of it.

One split is a folder holding ``noisy.npy`` and ``clean.npy``: uint8 arrays of shape
``(N, P, P, 3)``, memory-mapped on read, so a random patch costs one slice and no PNG decode.

:class:`RandomCropDataset` draws a fresh random sub-crop and a random dihedral transform
(flips and 90-degree rotations) every time an index is fetched; the randomness comes from a
generator seeded per (seed, epoch, index), so a run is reproducible and the DataLoader worker
count does not change the samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from denoise.errors import DenoiseError
from denoise.fileio import atomic_path

NOISY_FILE = "noisy.npy"
CLEAN_FILE = "clean.npy"


def write_patch_store(out_dir: str | Path, noisy: np.ndarray, clean: np.ndarray) -> None:
    """Write one split's patches (``(N, P, P, 3)`` uint8 each) atomically."""
    if noisy.shape != clean.shape or noisy.dtype != np.uint8 or clean.dtype != np.uint8:
        raise ValueError(f"noisy {noisy.shape} {noisy.dtype} vs clean {clean.shape} {clean.dtype}")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / NOISY_FILE, noisy)
        np.save(tmp / CLEAN_FILE, clean)


@contextlib.contextmanager
def create_patch_store(
    out_dir: str | Path, count: int, patch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Streaming form of :func:`write_patch_store` for stores larger than memory.

    Yields ``(noisy, clean)`` writable memory maps of shape ``(count, P, P, 3)`` to be filled
    in place (e.g. one image at a time); the folder appears at ``out_dir`` only when the block
    exits without an exception. The files are byte-identical to what ``write_patch_store``
    writes for the same arrays.
    """
    shape = (count, patch_size, patch_size, 3)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        noisy = np.lib.format.open_memmap(tmp / NOISY_FILE, mode="w+", dtype=np.uint8, shape=shape)
        clean = np.lib.format.open_memmap(tmp / CLEAN_FILE, mode="w+", dtype=np.uint8, shape=shape)
        yield noisy, clean
        noisy.flush()
        clean.flush()


def read_patch_store(split_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one split's ``(noisy, clean)`` patch arrays."""
    split_dir = Path(split_dir)
    try:
        noisy = np.load(split_dir / NOISY_FILE, mmap_mode="r")
        clean = np.load(split_dir / CLEAN_FILE, mmap_mode="r")
    except FileNotFoundError as e:
        raise DenoiseError(
            f"{split_dir}: no patch store ({e.filename} missing); run the crop-split stage first"
        ) from None
    except (ValueError, OSError) as e:
        raise DenoiseError(
            f"{split_dir}: unreadable patch store ({e}); run `dvc repro -s -f crop-split`"
        ) from None
    if noisy.dtype != np.uint8 or clean.dtype != np.uint8:
        raise DenoiseError(f"{split_dir}: patch store holds {noisy.dtype}/{clean.dtype}, not uint8")
    if noisy.shape != clean.shape or noisy.ndim != 4 or noisy.shape[-1] != 3:
        raise DenoiseError(
            f"{split_dir}: noisy {noisy.shape} and clean {clean.shape} "
            "are not matching (N, P, P, 3) arrays"
        )
    return noisy, clean


def evenly_spaced(count: int, limit: int) -> list[int]:
    """``limit`` indices of ``range(count)`` spread evenly, first and last included (every one
    for ``limit`` <= 0 or >= ``count``): the patches of a store that training validates on,
    evaluate tunes NLM on and bench calibrates int8 on."""
    if limit <= 0 or limit >= count:
        return list(range(count))
    return [round(x) for x in np.linspace(0, count - 1, limit)]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in [0, 1]."""
    # Converting to float copies, so a read-only memmap slice never reaches torch.from_numpy
    # (which warns about non-writable arrays).
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(chw).div_(255.0)


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HWC image (``k`` in 0..7)."""
    img = np.rot90(img, k % 4, axes=(0, 1))
    return img[:, ::-1] if k >= 4 else img


class CropTooLarge(DenoiseError):
    """A crop larger than the stored patches (a setting to change, not the data)."""


class RandomCropDataset(Dataset):
    """Random ``crop`` x ``crop`` sub-crops with random dihedral augmentation.

    ``len`` is the number of patches; call :meth:`set_epoch` so each pass draws new crops.
    With ``augment=False`` the crop is the patch centre and no transform is applied (for
    validation).
    """

    def __init__(
        self, split_dir: str | Path, crop: int, *, augment: bool = True, seed: int = 0
    ) -> None:
        self.noisy, self.clean = read_patch_store(split_dir)
        patch = self.noisy.shape[1]
        if crop > patch or crop > self.noisy.shape[2]:
            raise CropTooLarge(
                f"{split_dir}: crop {crop} is larger than the stored "
                f"{self.noisy.shape[1]}x{self.noisy.shape[2]} patches"
            )
        self.crop = crop
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.noisy.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, h, w, _ = self.noisy.shape
        c = self.crop
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            y = int(rng.integers(0, h - c + 1))
            x = int(rng.integers(0, w - c + 1))
            k = int(rng.integers(0, 8))
        else:
            y, x, k = (h - c) // 2, (w - c) // 2, 0
        noisy = dihedral(self.noisy[index, y : y + c, x : x + c], k)
        clean = dihedral(self.clean[index, y : y + c, x : x + c], k)
        return to_tensor(noisy), to_tensor(clean)
