"""The patch store (plain and streaming writers, reader) and the training Dataset on top of it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from denoise.data.patch_store import (
    CLEAN_FILE,
    NOISY_FILE,
    RandomCropDataset,
    create_patch_store,
    dihedral,
    read_patch_store,
    to_tensor,
    write_patch_store,
)
from denoise.errors import DenoiseError


def _patches(n: int = 5, p: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random clean patches and a noisy partner that is a known pixelwise function of them."""
    clean = np.random.default_rng(seed).integers(0, 256, (n, p, p, 3), dtype=np.uint8)
    return 255 - clean, clean


def _store(tmp_path: Path, n: int = 5, p: int = 16) -> Path:
    noisy, clean = _patches(n, p)
    write_patch_store(tmp_path / "split", noisy, clean)
    return tmp_path / "split"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_write_read_roundtrip_is_memory_mapped(tmp_path: Path) -> None:
    noisy, clean = _patches()
    store = _store(tmp_path)
    got_noisy, got_clean = read_patch_store(store)
    assert isinstance(got_noisy, np.memmap)
    np.testing.assert_array_equal(got_noisy, noisy)
    np.testing.assert_array_equal(got_clean, clean)


def test_streaming_writer_matches_plain_writer_bytes(tmp_path: Path) -> None:
    noisy, clean = _patches(n=4, p=8)
    write_patch_store(tmp_path / "plain", noisy, clean)
    with create_patch_store(tmp_path / "stream", 4, 8) as (n_store, c_store):
        assert not (tmp_path / "stream").exists()  # published only on success
        for i in range(4):
            n_store[i] = noisy[i]
            c_store[i] = clean[i]
    for name in (NOISY_FILE, CLEAN_FILE):
        assert _md5(tmp_path / "stream" / name) == _md5(tmp_path / "plain" / name)


def test_streaming_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), create_patch_store(tmp_path / "split", 3, 8):
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_mismatched_arrays(tmp_path: Path) -> None:
    noisy, clean = _patches()
    with pytest.raises(ValueError, match="noisy"):
        write_patch_store(tmp_path / "s", noisy[:3], clean)
    with pytest.raises(ValueError):
        write_patch_store(tmp_path / "s", noisy.astype(np.float32), clean)
    assert not (tmp_path / "s").exists()


def test_read_missing_store_names_folder_and_stage(tmp_path: Path) -> None:
    with pytest.raises(DenoiseError, match=r"nowhere.*crop-split"):
        read_patch_store(tmp_path / "nowhere")


def test_read_rejects_mismatched_files(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    np.save(tmp_path / "s" / NOISY_FILE, np.zeros((2, 8, 8, 3), np.uint8))
    np.save(tmp_path / "s" / CLEAN_FILE, np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(DenoiseError, match="not matching"):
        read_patch_store(tmp_path / "s")


def test_read_rejects_corrupt_and_non_uint8_stores(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    np.save(tmp_path / "s" / NOISY_FILE, np.zeros((2, 8, 8, 3), np.float32))
    np.save(tmp_path / "s" / CLEAN_FILE, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(DenoiseError, match=r"s: patch store holds float32/float32, not uint8"):
        read_patch_store(tmp_path / "s")
    (tmp_path / "s" / NOISY_FILE).write_bytes(b"not a numpy file")
    with pytest.raises(DenoiseError, match=r"s: unreadable patch store"):
        read_patch_store(tmp_path / "s")


def test_to_tensor_is_chw_unit_range() -> None:
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 1] = (255, 0, 51)
    t = to_tensor(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[:, 0, 1].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_dihedral_gives_eight_distinct_permutations() -> None:
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    outs = [dihedral(img, k) for k in range(8)]
    assert len({o.tobytes() for o in outs}) == 8
    for o in outs:  # a rearrangement of the same pixels
        assert sorted(map(tuple, o.reshape(-1, 3))) == sorted(map(tuple, img.reshape(-1, 3)))
    np.testing.assert_array_equal(outs[0], img)


def test_dataset_rejects_crop_larger_than_patch(tmp_path: Path) -> None:
    with pytest.raises(DenoiseError, match="crop 17"):
        RandomCropDataset(_store(tmp_path, p=16), crop=17)


def test_dataset_draws_a_fresh_crop_each_epoch(tmp_path: Path) -> None:
    ds = RandomCropDataset(_store(tmp_path, p=16), crop=8, seed=3)
    assert len(ds) == 5
    per_epoch = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        per_epoch.append(ds[2][1].numpy().tobytes())
    assert len(set(per_epoch)) > 1
    ds.set_epoch(4)  # reproducible: the same (seed, epoch, index) gives the same sample
    assert ds[2][1].numpy().tobytes() == per_epoch[4]
    other = RandomCropDataset(_store(tmp_path / "o", p=16), crop=8, seed=4)
    assert [other[i][1].numpy().tobytes() for i in range(5)] != [
        ds[i][1].numpy().tobytes() for i in range(5)
    ]


def test_dataset_keeps_noisy_and_clean_aligned_under_all_transforms(tmp_path: Path) -> None:
    store = _store(tmp_path, n=2, p=16)
    _, clean = read_patch_store(store)
    ds = RandomCropDataset(store, crop=16)  # whole patch: only the dihedral transform varies
    seen = set()
    for epoch in range(48):
        ds.set_epoch(epoch)
        noisy_t, clean_t = ds[0]
        assert noisy_t.shape == clean_t.shape == (3, 16, 16)
        torch.testing.assert_close(noisy_t, 1.0 - clean_t)  # noisy = 255 - clean, pixelwise
        img = (clean_t.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        ks = [k for k in range(8) if np.array_equal(dihedral(clean[0], k), img)]
        assert len(ks) == 1
        seen.add(ks[0])
    assert len(seen) >= 6  # transforms are actually drawn (48 draws of 8 equally likely)


def test_sub_crops_align_and_come_from_the_patch(tmp_path: Path) -> None:
    store = _store(tmp_path, n=3, p=16)
    ds = RandomCropDataset(store, crop=6, seed=1)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in range(3):
            noisy_t, clean_t = ds[i]
            torch.testing.assert_close(noisy_t, 1.0 - clean_t)


def test_validation_mode_is_the_fixed_centre_crop(tmp_path: Path) -> None:
    store = _store(tmp_path, n=2, p=16)
    noisy, clean = read_patch_store(store)
    ds = RandomCropDataset(store, crop=8, augment=False)
    first = ds[1]
    ds.set_epoch(7)
    again = ds[1]
    for got, ref in zip(again, (noisy, clean), strict=True):
        torch.testing.assert_close(got, to_tensor(ref[1, 4:12, 4:12]))
    torch.testing.assert_close(first[0], again[0])
