"""The order in which training sees its samples: a pure function of (seed, iteration).

Iteration ``i`` takes positions ``[i * B, (i + 1) * B)`` of an endless stream made of one
seeded permutation of the patch indices per epoch; each DDP rank takes its contiguous
``B / world`` slice. Every item carries its epoch, so :class:`RandomCropDataset` draws the
crop and flip for ``(seed, epoch, index)`` inside whichever worker loads it. Nothing depends
on history, so a resumed run (or a different worker count) sees exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from denoise.data.patch_store import RandomCropDataset


class EpochIndexed(Dataset):
    """Wrap a :class:`RandomCropDataset` so items are fetched by ``(epoch, index)``."""

    def __init__(self, base: RandomCropDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        self.base.set_epoch(epoch)
        return self.base[index]


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless per-rank batches of ``(epoch, index)`` for iterations ``start, start+1, ...``."""

    def __init__(
        self, n: int, global_batch: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world} ranks")
        self.n, self.global_batch, self.seed, self.start = n, global_batch, seed, start
        self.rank, self.local = rank, global_batch // world
        self._perm_epoch = -1
        self._perm = np.arange(n)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        first = iteration * self.global_batch + self.rank * self.local
        out = []
        for pos in range(first, first + self.local):
            epoch, offset = divmod(pos, self.n)
            out.append((epoch, int(self._permutation(epoch)[offset])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start
        while True:
            yield self.batch(it)
            it += 1
