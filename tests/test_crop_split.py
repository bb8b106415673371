"""The crop-split stage: splitting, patch cutting, pair validation and the stage end to end."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from denoise.data.crop_split import (
    SplitParams,
    build_split,
    count_patches,
    iter_patches,
    patch_origins,
    split_counts,
    split_instances,
)
from denoise.data.patch_store import read_patch_store
from denoise.data.sidd_layout import GT_NAME, NOISY_NAME, Instance, list_instances
from denoise.errors import DenoiseError
from denoise.fileio import read_rgb8, write_rgb8
from denoise.metrics import psnr

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = {"train": 120, "val": 30, "test": 10}


def _params(**over: Any) -> SplitParams:
    d = {
        "seed": 42,
        "weights": WEIGHTS,
        "val_scenes": [],
        "test_scenes": [],
        "patch_size": 16,
        "step": 8,
    }
    return SplitParams.from_dict({**d, **over})


def _name(i: int, scene: int = 1) -> str:
    return f"{i:04d}_{scene:03d}_S6_00100_00060_3200_L"


def _instances(n: int, scenes: int = 10) -> list[Instance]:
    return [Instance.parse(_name(i + 1, i % scenes + 1)) for i in range(n)]


def _make_raw(root: Path, n: int = 6, h: int = 20, w: int = 28, seed: int = 0) -> Path:
    """A tiny SIDD-layout folder: root/Data/<instance>/{GT,NOISY}_SRGB_010.PNG."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / "Data" / _name(i + 1, i % 3 + 1)
        clean = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        noise = rng.integers(-20, 21, clean.shape)
        write_rgb8(folder / GT_NAME, clean)
        write_rgb8(folder / NOISY_NAME, np.clip(clean + noise, 0, 255).astype(np.uint8))
    return root


def _tree_hashes(base: Path, *roots: str) -> dict[str, str]:
    """sha256 of every file under ``base/root``, keyed by path relative to ``base``."""
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted((base / root).rglob("*"))
        if p.is_file()
    }


# --- splitting -------------------------------------------------------------------------------


def test_default_weights_split_sidd_120_30_10() -> None:
    assert split_counts(160, WEIGHTS) == {"train": 120, "val": 30, "test": 10}


@pytest.mark.parametrize("n", [3, 4, 7, 10, 17, 50, 161, 333])
def test_split_counts_are_proportional_and_complete(n: int) -> None:
    counts = split_counts(n, WEIGHTS)
    assert sum(counts.values()) == n
    assert all(c >= 1 for c in counts.values())
    total = sum(WEIGHTS.values())
    for s, c in counts.items():
        quota = n * WEIGHTS[s] / total
        if quota >= 1:  # otherwise the at-least-one rule may move it
            assert abs(c - quota) < 1 + (n < 16), (s, c, quota)


def test_split_counts_with_few_instances_or_zero_weight() -> None:
    assert split_counts(3, WEIGHTS) == {"train": 1, "val": 1, "test": 1}
    assert sum(split_counts(2, WEIGHTS).values()) == 2
    assert split_counts(20, {"train": 3, "val": 1, "test": 0})["test"] == 0


def test_split_is_disjoint_covering_and_stable_under_listing_order() -> None:
    insts = _instances(40)
    split = split_instances(insts, _params())
    names = [n for s in ("train", "val", "test") for n in split[s]]
    assert sorted(names) == sorted(i.name for i in insts)  # covers all, no duplicates
    assert [len(split[s]) for s in ("train", "val", "test")] == [30, 8, 2]
    assert all(split[s] == sorted(split[s]) for s in split)
    shuffled = insts[:]
    random.Random(1).shuffle(shuffled)
    assert split_instances(shuffled, _params()) == split
    assert split_instances(insts, _params(seed=43)) != split  # the seed matters


def test_scene_holdout_keeps_scenes_whole() -> None:
    insts = _instances(30, scenes=5)
    split = split_instances(insts, _params(val_scenes=[2], test_scenes=[4, 5]))
    scene = {i.name: i.scene for i in insts}
    assert {scene[n] for n in split["val"]} == {2}
    assert {scene[n] for n in split["test"]} == {4, 5}
    assert {scene[n] for n in split["train"]} == {1, 3}
    assert sum(len(v) for v in split.values()) == 30


def test_scene_holdout_errors() -> None:
    with pytest.raises(DenoiseError, match=r"scenes \[9\] have no instances"):
        split_instances(_instances(10, scenes=3), _params(test_scenes=[9]))
    with pytest.raises(DenoiseError, match="both"):
        _params(val_scenes=[1], test_scenes=[1])
    with pytest.raises(DenoiseError, match="no instances left for training"):
        split_instances(_instances(4, scenes=2), _params(val_scenes=[1], test_scenes=[2]))
    with pytest.raises(DenoiseError, match="no instances left for validation"):
        split_instances(_instances(10, scenes=3), _params(test_scenes=[2]))
    # Without test images the pipeline would train both models and only then fail at evaluate.
    with pytest.raises(DenoiseError, match="no instances left for testing"):
        split_instances(_instances(10, scenes=3), _params(val_scenes=[2]))
    with pytest.raises(DenoiseError, match=r"no instances left .*evaluation needs test"):
        split_instances(_instances(2), _params())  # fewer instances than splits


def test_params_are_checked() -> None:
    with pytest.raises(DenoiseError, match="step"):
        _params(step=17)
    with pytest.raises(DenoiseError, match="weights"):
        _params(weights={"train": 0, "val": 1, "test": 1})
    for split in ("val", "test"):
        with pytest.raises(DenoiseError, match="must all be positive"):
            _params(weights={"train": 1, "val": 1, "test": 1} | {split: 0})
    for weight in (math.nan, math.inf, 1e308):  # 1e308: the sum overflows
        with pytest.raises(DenoiseError, match="must all be positive and finite"):
            _params(weights={"train": weight, "val": 1e308, "test": 1})
    with pytest.raises(DenoiseError, match=r"crop_split\.weights: unknown tset"):
        _params(weights={"train": 1, "val": 1, "test": 1, "tset": 1})
    with pytest.raises(DenoiseError, match="crop_split"):
        SplitParams.from_dict({"seed": 1})
    with pytest.raises(DenoiseError, match=r"params\.yaml crop_split: unknown stpe"):
        _params(stpe=8)


# --- patch cutting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (384, [0, 128]),
        (512, [0, 128, 256]),
        (300, [0, 44]),
        (256, [0]),
        (257, [0, 1]),
    ],
)
def test_patch_origins_follow_the_grid_and_end_flush(length: int, expected: list[int]) -> None:
    assert patch_origins(length, 256, 128) == expected


def test_patch_origins_reject_short_axis() -> None:
    with pytest.raises(ValueError, match="smaller"):
        patch_origins(10, 16, 8)


def test_patches_cover_every_pixel_and_match_slices() -> None:
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    patches = np.stack(list(iter_patches(img, 16, 12)))
    ys, xs = patch_origins(37, 16, 12), patch_origins(53, 16, 12)
    assert (
        patches.shape
        == (len(ys) * len(xs), 16, 16, 3)
        == (count_patches(37, 53, 16, 12), 16, 16, 3)
    )
    covered = np.zeros(img.shape[:2], bool)
    for k, (y, x) in enumerate((y, x) for y in ys for x in xs):
        np.testing.assert_array_equal(patches[k], img[y : y + 16, x : x + 16])
        covered[y : y + 16, x : x + 16] = True
    assert covered.all()
    np.testing.assert_array_equal(patches[-1], img[-16:, -16:])  # bottom-right corner kept


# --- building the split ----------------------------------------------------------------------


def test_build_split_writes_stores_test_images_and_manifest(tmp_path: Path) -> None:
    raw = _make_raw(tmp_path / "raw", n=6)
    result = build_split(raw, tmp_path / "split", _params())
    out = tmp_path / "split"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["patch_size"] == 16
    per_image = count_patches(20, 28, 16, 8)
    for split in ("train", "val"):
        noisy, clean = read_patch_store(out / split)
        n_pairs = len(manifest["splits"][split]["instances"])
        assert noisy.shape == clean.shape == (n_pairs * per_image, 16, 16, 3)
        assert manifest["splits"][split]["patches"] == result.patches[split] == len(noisy)
    # the first train patch is the top-left corner of the first (sorted) train instance
    first = manifest["splits"]["train"]["instances"][0]["name"]
    noisy, clean = read_patch_store(out / "train")
    np.testing.assert_array_equal(clean[0], read_rgb8(raw / "Data" / first / GT_NAME)[:16, :16])
    np.testing.assert_array_equal(
        noisy[per_image - 1], read_rgb8(raw / "Data" / first / NOISY_NAME)[-16:, -16:]
    )
    test_names = [i.name for i, _ in list_instances(out / "test")]
    assert test_names == [x["name"] for x in manifest["splits"]["test"]["instances"]]
    for name in test_names:  # byte copies
        for f in (GT_NAME, NOISY_NAME):
            assert (out / "test" / name / f).read_bytes() == (raw / "Data" / name / f).read_bytes()
    all_names = [x["name"] for s in manifest["splits"].values() for x in s["instances"]]
    assert sorted(all_names) == sorted(p.name for p in (raw / "Data").iterdir())
    entry = manifest["splits"]["val"]["instances"][0]
    folder = raw / "Data" / entry["name"]
    expected = psnr(read_rgb8(folder / NOISY_NAME), read_rgb8(folder / GT_NAME))
    assert entry["noisy_psnr"] == pytest.approx(expected, abs=1e-4)
    assert (entry["height"], entry["width"]) == (20, 28)
    metrics = result.metrics()
    assert {s: m["pairs"] for s, m in metrics.items()} == {"train": 4, "val": 1, "test": 1}
    assert metrics["val"]["noisy_psnr"] == pytest.approx(expected, abs=1e-4)


def _assert_fails_cleanly(raw: Path, out: Path, match: str) -> None:
    with pytest.raises(DenoiseError, match=match):
        build_split(raw, out, _params())
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


def test_too_little_disk_for_the_patches_is_refused_before_cutting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stores are memory-mapped: a disk filling while they are cut would kill the process
    (SIGBUS) with no message, so the room for them is checked first."""
    import denoise.fileio

    raw = _make_raw(tmp_path / "raw")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        denoise.fileio.shutil, "disk_usage", lambda _: usage._replace(free=2 * 16 * 16 * 3)
    )
    _assert_fails_cleanly(raw, tmp_path / "split", r"not enough free space in .* patches: need")


def test_a_failing_write_is_one_line_naming_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import denoise.data.crop_split

    def full(src: Path, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    raw = _make_raw(tmp_path / "raw")
    monkeypatch.setattr(denoise.data.crop_split.shutil, "copyfile", full)
    out = tmp_path / "split"
    message = rf"^{re.escape(str(out))}: cannot write \(No space left on device: .*\.PNG\)$"
    _assert_fails_cleanly(raw, out, message)


def test_missing_partner_is_rejected_naming_the_file(tmp_path: Path) -> None:
    raw = _make_raw(tmp_path / "raw")
    (raw / "Data" / _name(4, 1) / GT_NAME).unlink()
    _assert_fails_cleanly(raw, tmp_path / "split", rf"{_name(4, 1)}/{GT_NAME}: missing")


def test_size_mismatch_is_rejected_naming_the_file(tmp_path: Path) -> None:
    raw = _make_raw(tmp_path / "raw")
    write_rgb8(raw / "Data" / _name(2, 2) / GT_NAME, np.zeros((20, 27, 3), np.uint8))
    _assert_fails_cleanly(raw, tmp_path / "split", rf"{_name(2, 2)}/{NOISY_NAME}: size 28x20")


def test_rgba_is_rejected_naming_the_file(tmp_path: Path) -> None:
    raw = _make_raw(tmp_path / "raw")
    path = raw / "Data" / _name(5, 2) / NOISY_NAME
    cv2.imwrite(str(path), np.zeros((20, 28, 4), np.uint8))
    _assert_fails_cleanly(
        raw, tmp_path / "split", rf"{_name(5, 2)}/{NOISY_NAME}: has an alpha channel"
    )


def test_unreadable_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    raw = _make_raw(tmp_path / "raw")
    (raw / "Data" / _name(6, 3) / GT_NAME).write_bytes(b"not a png")
    _assert_fails_cleanly(raw, tmp_path / "split", rf"{_name(6, 3)}/{GT_NAME}: not a readable")


def test_image_smaller_than_patch_is_rejected_naming_it(tmp_path: Path) -> None:
    raw = _make_raw(tmp_path / "raw", h=12)
    _assert_fails_cleanly(raw, tmp_path / "split", rf"{NOISY_NAME}: 28x12 is smaller than")


def test_grey_and_16bit_are_converted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = _make_raw(tmp_path / "raw", n=3)  # three instances: one per split
    rng = np.random.default_rng(5)
    grey = raw / "Data" / _name(1, 1) / GT_NAME
    cv2.imwrite(str(grey), rng.integers(0, 256, (20, 28), dtype=np.uint8))
    deep = raw / "Data" / _name(2, 2) / NOISY_NAME
    cv2.imwrite(str(deep), rng.integers(0, 65536, (20, 28, 3), dtype=np.uint16))
    deep_gt = raw / "Data" / _name(3, 3) / GT_NAME
    cv2.imwrite(str(deep_gt), rng.integers(0, 65536, (20, 28, 3), dtype=np.uint16))
    with caplog.at_level(logging.WARNING):
        result = build_split(raw, tmp_path / "split", _params())
    logged = [r.getMessage() for r in caplog.records]
    for path in (grey, deep, deep_gt):
        assert sum(str(path) in m and "converted" in m for m in logged) == 1
    assert sum(len(v) for v in result.splits.values()) == 3
    (test_name,) = [p.name for p in (tmp_path / "split" / "test").iterdir()]
    for f in (GT_NAME, NOISY_NAME):  # test images are written as 8-bit RGB
        img = cv2.imread(str(tmp_path / "split" / "test" / test_name / f), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (20, 28, 3)
        # each the converted pixels of its own source file (not the pair's other image)
        source = raw / "Data" / test_name / f
        np.testing.assert_array_equal(img[..., ::-1], read_rgb8(source))


# --- the stage script ----------------------------------------------------------------------


def _run_stage(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "crop_split.py")],
        cwd=workdir,
        capture_output=True,
        text=True,
    )


def _stage_dir(root: Path, n: int = 6) -> Path:
    _make_raw(root / "data" / "raw" / "SIDD_Small_sRGB_Only", n=n, h=24, w=30, seed=1)
    params = {
        "crop_split": {
            "seed": 7,
            "weights": WEIGHTS,
            "val_scenes": [],
            "test_scenes": [],
            "patch_size": 16,
            "step": 8,
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def test_stage_end_to_end_is_byte_identical_on_rerun(tmp_path: Path) -> None:
    hashes = []
    for run in ("a", "b"):
        work = _stage_dir(tmp_path / run)
        proc = _run_stage(work)
        assert proc.returncode == 0, proc.stderr
        hashes.append(_tree_hashes(work, "data/split", "metrics", "plots"))
    assert hashes[0] == hashes[1]
    assert {
        "data/split/manifest.json",
        "data/split/train/noisy.npy",
        "data/split/val/clean.npy",
        "metrics/data.json",
        "plots/data/sample_strip.png",
    } <= set(hashes[0])
    metrics = json.loads((tmp_path / "a" / "metrics" / "data.json").read_text())
    assert {s: m["pairs"] for s, m in metrics.items()} == {"train": 4, "val": 1, "test": 1}
    assert metrics["train"]["patches"] == 4 * count_patches(24, 30, 16, 8)
    assert 0 < metrics["train"]["noisy_psnr"] < 60
    strip = tmp_path / "a" / "plots" / "data" / "sample_strip.png"
    assert strip.stat().st_size < 500_000
    assert read_rgb8(strip).shape[1] > 2 * 64


def test_stage_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    work = _stage_dir(tmp_path)
    bad = work / "data" / "raw" / "SIDD_Small_sRGB_Only" / "Data" / _name(3, 3) / NOISY_NAME
    cv2.imwrite(str(bad), np.zeros((24, 30, 4), np.uint8))
    proc = _run_stage(work)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad.relative_to(work)) in errors[0] and "RGBA" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (work / "data" / "split").exists() and not (work / "metrics").exists()
