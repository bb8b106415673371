"""Turn a SIDD-layout folder into the train/val patch stores and the whole-image test set.

    <out>/manifest.json                     params, the instances of every split, patch counts
    <out>/train/{noisy,clean}.npy           (N, P, P, 3) uint8 patches, see patch_store
    <out>/val/{noisy,clean}.npy
    <out>/test/<instance>/{GT,NOISY}_SRGB_010.PNG   whole images, SIDD layout

Three passes over the pairs, each holding one image pair in memory at a time: validate every
pair and score its noisy PSNR (nothing is written if any pair is bad), then cut patches
straight into memory-mapped arrays sized from the image sizes, then copy the test images.
The whole output folder is published atomically.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from denoise.data.pairs import check_same_size
from denoise.data.patch_store import create_patch_store
from denoise.data.sidd_layout import GT_NAME, NOISY_NAME, Instance, list_instances, pair_paths
from denoise.errors import DenoiseError
from denoise.fileio import (
    atomic_path,
    check_free_space,
    read_rgb8,
    write_errors_named,
    write_json,
    write_rgb8,
)
from denoise.metrics import SCORE_DECIMALS, psnr
from denoise.params import check_keys, checked_section, positive_finite

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PATCH_SPLITS = ("train", "val")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SplitParams:
    """The ``crop_split`` section of params.yaml."""

    seed: int
    weights: Mapping[str, float]
    val_scenes: tuple[int, ...]
    test_scenes: tuple[int, ...]
    patch_size: int
    step: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SplitParams:
        """Parse and check the params section; every problem is a one-line DenoiseError."""
        d = checked_section(cls, d, "crop_split")  # no unknown or missing keys, checked types
        check_keys(d["weights"], SPLITS, SPLITS, "params.yaml crop_split.weights")
        weights = {s: d["weights"][s] for s in SPLITS}
        params = cls(
            d["seed"],
            weights,
            d["val_scenes"],
            d["test_scenes"],
            d["patch_size"],
            d["step"],
        )
        if not positive_finite(*weights.values(), sum(weights.values())):
            raise DenoiseError(
                f"params.yaml crop_split.weights: {weights} must all be positive and finite: "
                "training needs train and val, evaluation needs test"
            )
        if params.patch_size < 1 or not 1 <= params.step <= params.patch_size:
            raise DenoiseError(
                f"params.yaml crop_split: need patch_size >= 1 and 1 <= step <= "
                f"patch_size (got {params.patch_size}, {params.step}); a larger "
                "step would skip pixels"
            )
        both = set(params.val_scenes) & set(params.test_scenes)
        if both:
            raise DenoiseError(
                f"params.yaml crop_split: scenes {sorted(both)} are in both "
                "val_scenes and test_scenes"
            )
        return params

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "weights": dict(self.weights),
            "val_scenes": list(self.val_scenes),
            "test_scenes": list(self.test_scenes),
            "patch_size": self.patch_size,
            "step": self.step,
        }


@dataclass(frozen=True)
class PairInfo:
    """One validated noisy/clean pair."""

    instance: Instance
    folder: Path
    height: int
    width: int
    noisy_psnr: float
    converted: bool  # a grey or 16-bit file was converted to 8-bit RGB on read

    @property
    def name(self) -> str:
        return self.instance.name


@dataclass(frozen=True)
class SplitResult:
    """What :func:`build_split` wrote, for the metrics and the sample strip."""

    splits: dict[str, list[PairInfo]]
    patches: dict[str, int]

    def metrics(self) -> dict[str, Any]:
        """metrics/data.json: pairs, patches and mean noisy PSNR per split."""
        out: dict[str, Any] = {}
        for split, pairs in self.splits.items():
            scores = [p.noisy_psnr for p in pairs]
            entry: dict[str, Any] = {
                "pairs": len(pairs),
                "noisy_psnr": round(float(np.mean(scores)), SCORE_DECIMALS) if scores else None,
            }
            if split in self.patches:
                entry["patches"] = self.patches[split]
            out[split] = entry
        return out


# --- splitting -------------------------------------------------------------------------------


def split_counts(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Instances per split: largest-remainder rounding of ``n`` by ``weights``.

    With at least three instances every split of positive weight gets one or more (taken
    from the largest split), so val and test are never silently empty.
    """
    total = sum(weights[s] for s in SPLITS)
    quotas = {s: n * weights[s] / total for s in SPLITS}
    counts = {s: math.floor(quotas[s]) for s in SPLITS}
    by_remainder = sorted(SPLITS, key=lambda s: (-(quotas[s] - counts[s]), SPLITS.index(s)))
    for s in by_remainder[: n - sum(counts.values())]:
        counts[s] += 1
    if n >= len(SPLITS):
        for s in SPLITS:
            if weights[s] > 0 and counts[s] == 0:
                largest = max(SPLITS, key=lambda t: (counts[t], -SPLITS.index(t)))
                counts[largest] -= 1
                counts[s] += 1
    return counts


def _rank_key(seed: int, name: str) -> str:
    """A seeded pseudo-random rank that does not depend on the other names or their order."""
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def split_instances(instances: Sequence[Instance], params: SplitParams) -> dict[str, list[str]]:
    """Assign instance names to train/val/test; each list is sorted by name.

    By weights (seeded, independent of listing order) unless ``val_scenes`` or ``test_scenes``
    is set; then by scene: those scenes' instances go to val/test and the rest to train.
    """
    names = sorted({i.name for i in instances})
    if len(names) != len(instances):
        raise DenoiseError("duplicate instance names in the input folder")
    if params.val_scenes or params.test_scenes:
        present = {i.scene for i in instances}
        missing = sorted(set(params.val_scenes + params.test_scenes) - present)
        if missing:
            raise DenoiseError(
                f"params.yaml crop_split: scenes {missing} have no instances "
                f"(scenes present: {sorted(present)})"
            )
        out: dict[str, list[str]] = {s: [] for s in SPLITS}
        for inst in instances:
            split = (
                "val"
                if inst.scene in params.val_scenes
                else "test"
                if inst.scene in params.test_scenes
                else "train"
            )
            out[split].append(inst.name)
    else:
        counts = split_counts(len(names), params.weights)
        ranked = sorted(names, key=lambda n: _rank_key(params.seed, n))
        out, start = {}, 0
        for s in SPLITS:
            out[s] = ranked[start : start + counts[s]]
            start += counts[s]
    for split, role in (("train", "training"), ("val", "validation"), ("test", "testing")):
        if not out[split]:
            raise DenoiseError(
                f"no instances left for {role} ({len(names)} instances, split "
                f"{ {s: len(v) for s, v in out.items()} }); training needs train and val, "
                "evaluation needs test"
            )
    return {s: sorted(v) for s, v in out.items()}


# --- patches -------------------------------------------------------------------------------


def patch_origins(length: int, patch_size: int, step: int) -> list[int]:
    """Patch start offsets along one axis, the NAFNet way.

    ``0, step, 2*step, ...`` while the patch fits, plus one patch flush with the far border
    when the regular grid stops short of it (NAFNet's extract_subimages with thresh_size 0),
    so every pixel is in at least one patch.
    """
    if length < patch_size:
        raise ValueError(f"length {length} is smaller than patch_size {patch_size}")
    starts = list(range(0, length - patch_size + 1, step))
    if starts[-1] + patch_size < length:
        starts.append(length - patch_size)
    return starts


def count_patches(height: int, width: int, patch_size: int, step: int) -> int:
    return len(patch_origins(height, patch_size, step)) * len(
        patch_origins(width, patch_size, step)
    )


def iter_patches(img: np.ndarray, patch_size: int, step: int) -> Iterator[np.ndarray]:
    """Views of ``img``'s patches in row-major order (no copies)."""
    h, w = img.shape[:2]
    for y in patch_origins(h, patch_size, step):
        for x in patch_origins(w, patch_size, step):
            yield img[y : y + patch_size, x : x + patch_size]


# --- reading and validating pairs ----------------------------------------------------------


def read_pair_image(path: Path, *, log_conversion: bool = True) -> tuple[np.ndarray, bool]:
    """Read an 8-bit RGB image; grey and 16-bit are converted (and logged), the rest refused.

    Returns the image and whether it was converted.
    """
    try:
        return read_rgb8(path, allow_convert=False), False
    except DenoiseError as strict:
        img = read_rgb8(path, allow_convert=True)  # raises again for RGBA, unreadable, missing
        if log_conversion:
            log.warning("%s; converted to 8-bit RGB", strict)
        return img, True


def read_instance_pair(
    folder: Path, *, log_conversion: bool = True
) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(noisy, clean, converted)`` of one instance folder, checked to match in size."""
    noisy_path, clean_path = pair_paths(folder)
    noisy, noisy_conv = read_pair_image(noisy_path, log_conversion=log_conversion)
    clean, clean_conv = read_pair_image(clean_path, log_conversion=log_conversion)
    check_same_size(noisy_path, noisy, clean_path, clean)
    return noisy, clean, noisy_conv or clean_conv


def validate_pairs(found: Sequence[tuple[Instance, Path]], patch_size: int) -> list[PairInfo]:
    """Read and check every pair, scoring its noisy PSNR; the first bad pair raises."""
    pairs = []
    for inst, folder in tqdm(found, desc="validate pairs", unit="pair"):
        noisy, clean, converted = read_instance_pair(folder)
        h, w = noisy.shape[:2]
        if min(h, w) < patch_size:
            raise DenoiseError(
                f"{folder / NOISY_NAME}: {w}x{h} is smaller than the "
                f"{patch_size}x{patch_size} patch size"
            )
        score = round(psnr(noisy, clean), SCORE_DECIMALS)
        pairs.append(PairInfo(inst, folder, h, w, score, converted))
    return pairs


# --- writing -------------------------------------------------------------------------------


def _write_patches(out_dir: Path, pairs: Sequence[PairInfo], params: SplitParams) -> int:
    p, step = params.patch_size, params.step
    total = sum(count_patches(x.height, x.width, p, step) for x in pairs)
    # The store is memory-mapped: a disk that fills while it is cut kills the process
    # (SIGBUS), with no error to report, so the room is checked first (noisy + clean).
    check_free_space(out_dir.parent, 2 * total * p * p * 3, f"the {out_dir.name} patches")
    with create_patch_store(out_dir, total, p) as (noisy_store, clean_store):
        k = 0
        for pair in tqdm(pairs, desc=f"cut {out_dir.name} patches", unit="pair"):
            noisy, clean, _ = read_instance_pair(pair.folder, log_conversion=False)
            for n, c in zip(
                iter_patches(noisy, p, step), iter_patches(clean, p, step), strict=True
            ):
                noisy_store[k] = n
                clean_store[k] = c
                k += 1
        assert k == total, (k, total)
    return total


def _copy_test_pair(pair: PairInfo, out_dir: Path) -> None:
    """Copy the files as they are; re-encode only the ones that needed converting."""
    dest = out_dir / pair.name
    dest.mkdir(parents=True)
    if pair.converted:
        noisy, clean, _ = read_instance_pair(pair.folder, log_conversion=False)
        write_rgb8(dest / NOISY_NAME, noisy)
        write_rgb8(dest / GT_NAME, clean)
    else:
        shutil.copyfile(pair.folder / NOISY_NAME, dest / NOISY_NAME)
        shutil.copyfile(pair.folder / GT_NAME, dest / GT_NAME)


def _manifest(params: SplitParams, result: SplitResult) -> dict[str, Any]:
    """manifest.json: the params used and, per split, its instances (sorted) and patch counts."""
    splits: dict[str, Any] = {}
    for split, pairs in result.splits.items():
        instances = []
        for x in pairs:
            item: dict[str, Any] = {
                "name": x.name,
                "height": x.height,
                "width": x.width,
                "noisy_psnr": x.noisy_psnr,
            }
            if split in PATCH_SPLITS:
                item["patches"] = count_patches(x.height, x.width, params.patch_size, params.step)
            instances.append(item)
        splits[split] = {"instances": instances}
        if split in PATCH_SPLITS:
            splits[split]["patches"] = result.patches[split]
    return {"params": params.as_dict(), "splits": splits}


def build_split(raw_dir: str | Path, out_dir: str | Path, params: SplitParams) -> SplitResult:
    """Validate every pair under ``raw_dir``, split them and write ``out_dir`` atomically."""
    found = list_instances(raw_dir)
    names = split_instances([inst for inst, _ in found], params)
    pairs = validate_pairs(found, params.patch_size)
    by_name = {x.name: x for x in pairs}
    splits = {s: [by_name[n] for n in names[s]] for s in SPLITS}
    with write_errors_named(out_dir), atomic_path(out_dir) as tmp:
        tmp.mkdir()
        patches = {s: _write_patches(tmp / s, splits[s], params) for s in PATCH_SPLITS}
        (tmp / "test").mkdir()
        for pair in tqdm(splits["test"], desc="copy test pairs", unit="pair"):
            _copy_test_pair(pair, tmp / "test")
        result = SplitResult(splits, patches)
        write_json(tmp / MANIFEST, _manifest(params, result))
    return result


# --- the sample strip ----------------------------------------------------------------------


def sample_strip(
    pairs: Sequence[PairInfo], *, count: int = 3, crop: int = 64, zoom: int = 2
) -> np.ndarray:
    """Rows of (noisy | clean) centre crops, zoomed ``zoom`` x, each under a label line.

    Drawn with OpenCV's Hershey fonts and nearest-neighbour zoom only, so the same input gives
    the same pixels (and, written as PNG, the same bytes) on every machine.
    """
    tile, gap, label_h = crop * zoom, 4, 18
    rows = []
    for pair in pairs[:count]:
        noisy, clean, _ = read_instance_pair(pair.folder, log_conversion=False)
        c = min(crop, pair.height, pair.width)
        y, x = (pair.height - c) // 2, (pair.width - c) // 2
        tiles = [
            cv2.resize(
                np.ascontiguousarray(im[y : y + c, x : x + c]),
                (tile, tile),
                interpolation=cv2.INTER_NEAREST,
            )
            for im in (noisy, clean)
        ]
        row = np.full((label_h + tile + gap, 2 * tile + 3 * gap, 3), 255, np.uint8)
        row[label_h : label_h + tile, gap : gap + tile] = tiles[0]
        row[label_h : label_h + tile, 2 * gap + tile : 2 * gap + 2 * tile] = tiles[1]
        text = f"{pair.name} {pair.noisy_psnr:.1f}dB"
        scale = 0.4
        (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        scale *= min(1.0, (row.shape[1] - 2 * gap) / tw)
        cv2.putText(
            row,
            text,
            (gap, label_h - 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
        rows.append(row)
    if not rows:
        raise DenoiseError("no training pairs to draw a sample strip from")
    width = max(r.shape[1] for r in rows)
    header = np.full((label_h, width, 3), 255, np.uint8)
    for i, name in enumerate(("noisy", "clean")):
        cv2.putText(
            header,
            name,
            (gap + i * (tile + gap) + tile // 2 - 20, label_h - 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return np.concatenate([header, *rows])
