"""Scoring denoisers on whole noisy/clean image pairs: the evaluate stage and `denoise score`.

A *denoiser* here is any function from an ``(H, W, 3)`` uint8 photo to one of the same shape:
the identity (the noisy baseline), OpenCV's non-local means, or a network run in tiles by
:func:`denoise.infer.denoise_image`. :func:`score_image` is the one per-image scoring (PSNR and
SSIM of the uint8 output against the clean image, :mod:`denoise.metrics`), shared by the
evaluate stage and the ``score`` command.

The pairs it scores are found and read by :mod:`denoise.data.pairs`; ``denoise score`` also
takes SIDD's validation blocks (:mod:`denoise.data.sidd_blocks`), see :func:`pairs_to_score`.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from denoise.data import sidd_blocks, sidd_layout
from denoise.data.pairs import CLEAN_DIR, NOISY_DIR, find_pairs, read_pair
from denoise.data.patch_store import evenly_spaced, read_patch_store
from denoise.errors import DenoiseError
from denoise.fileio import atomic_path, clear_stale_staging, write_bytes_atomic, write_json
from denoise.infer import Backend, check_tiling, denoise_image, open_backend
from denoise.metrics import SCORE_DECIMALS, psnr, ssim
from denoise.models.registry import model_names
from denoise.params import checked_section, positive_finite
from denoise.plots import comparison_strip, detailed_crop, psnr_bar_chart

Denoiser = Callable[[np.ndarray], np.ndarray]


# --- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float


def score_image(output: np.ndarray, clean: np.ndarray) -> Score:
    """The per-image score: PSNR (dB) and SSIM of a uint8 output against the clean image."""
    return Score(psnr(output, clean), ssim(output, clean))


def _num(x: float) -> float | None:
    """Rounded for stable JSON bytes; ``inf`` (a perfect image) has no JSON number: null."""
    return round(float(x), SCORE_DECIMALS) if math.isfinite(x) else None


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def tiled_denoiser(backend: Backend, *, tile: int, overlap: int) -> Denoiser:
    """A network backend as a :data:`Denoiser` of whole photos (run in tiles)."""
    return partial(denoise_image, backend=backend, tile=tile, overlap=overlap)


#: A pair to score: its name and what reads it, ``() -> (noisy, clean)``.
PairToScore = tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]


def pairs_to_score(root: str | Path) -> tuple[int, Iterator[PairToScore]]:
    """What ``denoise score`` scores under ``root``: ``(count, iterator of (name, read))``.
    SIDD's validation blocks (both files read and checked here), or the pairs of
    :func:`find_pairs` (listed and matched here, each read when it is scored)."""
    root = Path(root)
    if sidd_blocks.has_blocks(root):
        mixed = [d for d in (NOISY_DIR, CLEAN_DIR) if (root / d).is_dir()]
        if mixed:
            raise DenoiseError(
                f"{root}: holds SIDD validation blocks (*.mat) and {'/'.join(mixed)}/ folders; "
                "point --pairs at a folder with one of them"
            )
        count, blocks = sidd_blocks.read_blocks(root)
        return count, ((name, lambda pair=(n, c): pair) for name, n, c in blocks)
    pairs = find_pairs(root)
    return len(pairs), ((pair.name, partial(read_pair, pair)) for pair in pairs)


def score_pairs(
    pairs: Iterable[PairToScore],
    denoiser: Denoiser,
    *,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``denoiser`` on uint8 pairs (:data:`PairToScore`): the ``denoise score`` report.

    ``{"input": {"psnr", "ssim"}, "output": {"psnr", "ssim"}, "images": [{"name",
    "input_psnr", "output_psnr", "input_ssim", "output_ssim"}, ...], "failed": [{"name",
    "error"}, ...]}``, means over the images scored. A pair that cannot be read or denoised
    is reported (on stderr) and skipped, so one bad file does not cost the others' scores;
    none scored is a :class:`DenoiseError`.
    """
    rows, failed = [], []
    for name, read in tqdm(pairs, total=total, desc="score", unit="image", disable=not progress):
        try:
            noisy, clean = read()
            output = denoiser(noisy)
        except DenoiseError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            failed.append({"name": name, "error": str(e)})
            continue
        before = score_image(noisy, clean)
        after = score_image(output, clean)
        rows.append(
            {
                "name": name,
                "input_psnr": before.psnr,
                "output_psnr": after.psnr,
                "input_ssim": before.ssim,
                "output_ssim": after.ssim,
            }
        )
    if not rows:
        raise DenoiseError(f"no pair could be scored ({len(failed)} failed)")
    mean = {k: _mean(r[k] for r in rows) for k in rows[0] if k != "name"}
    return {
        "input": {"psnr": _num(mean["input_psnr"]), "ssim": _num(mean["input_ssim"])},
        "output": {"psnr": _num(mean["output_psnr"]), "ssim": _num(mean["output_ssim"])},
        "images": [{k: v if k == "name" else _num(v) for k, v in r.items()} for r in rows],
        "failed": failed,
    }


def format_score_table(report: Mapping[str, Any]) -> str:
    """The ``score`` report as a fixed-width table with a mean row."""

    def cell(x: float | None, fmt: str) -> str:
        return format(math.inf if x is None else x, fmt)  # None: a perfect image's PSNR

    names = [r["name"] for r in report["images"]]
    width = max(len("mean"), *(len(n) for n in names))
    head = f"{'image':<{width}}  {'in PSNR':>8}  {'out PSNR':>8}  {'in SSIM':>7}  {'out SSIM':>8}"
    lines = [head, "-" * len(head)]
    rows = [
        (r["name"], r["input_psnr"], r["output_psnr"], r["input_ssim"], r["output_ssim"])
        for r in report["images"]
    ]
    rows.append(
        (
            "mean",
            report["input"]["psnr"],
            report["output"]["psnr"],
            report["input"]["ssim"],
            report["output"]["ssim"],
        )
    )
    for i, (name, ip, op, iss, oss) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(head))
        lines.append(
            f"{name:<{width}}  {cell(ip, '8.2f')}  {cell(op, '8.2f')}  "
            f"{cell(iss, '7.4f')}  {cell(oss, '8.4f')}"
        )
    return "\n".join(lines)


# --- baselines -------------------------------------------------------------------------------


def nlm_denoise(
    img: np.ndarray, *, h: float, h_color: float, template: int = 7, search: int = 21
) -> np.ndarray:
    """OpenCV's colour non-local means on an RGB uint8 image (OpenCV expects BGR)."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    out = cv2.fastNlMeansDenoisingColored(bgr, None, h, h_color, template, search)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def tune_nlm(
    noisy: Sequence[np.ndarray],
    clean: Sequence[np.ndarray],
    h_grid: Sequence[float],
    h_color_grid: Sequence[float],
    *,
    template: int = 7,
    search: int = 21,
    progress: bool = True,
) -> tuple[float, float, float]:
    """The ``(h, h_color)`` of the grid with the best mean PSNR over the given images.

    Returns ``(h, h_color, mean_psnr)``; ties go to the first in grid order.
    """
    best = (float(h_grid[0]), float(h_color_grid[0]), -math.inf)
    grid = list(itertools.product(h_grid, h_color_grid))
    for h, hc in tqdm(grid, desc="tune NLM", unit="setting", disable=not progress):
        score = _mean(
            psnr(nlm_denoise(n, h=h, h_color=hc, template=template, search=search), c)
            for n, c in zip(noisy, clean, strict=True)
        )
        if score > best[2]:
            best = (float(h), float(hc), score)
    return best


# --- the evaluate stage ----------------------------------------------------------------------


@dataclass(frozen=True)
class NlmParams:
    """``evaluate.nlm``: the grid of OpenCV non-local-means strengths tried on val patches."""

    h: tuple[float, ...]
    h_color: tuple[float, ...]
    val_patches: int
    template: int
    search: int


@dataclass(frozen=True)
class StripParams:
    """``evaluate.strip``: the comparison strips' crop and its enlargement."""

    crop: int
    zoom: int


@dataclass(frozen=True)
class EvalParams:
    """The ``evaluate`` section of params.yaml."""

    models: tuple[str, ...]
    tile: int
    overlap: int
    nlm: NlmParams
    strip: StripParams

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalParams:
        """Checked like every section: a missing or unknown key (a typo) is an error."""
        top = checked_section(cls, d, "evaluate")  # keys and the types of their values
        nlm = checked_section(NlmParams, top["nlm"], "evaluate.nlm")
        strip = checked_section(StripParams, top["strip"], "evaluate.strip")
        p = cls(top["models"], top["tile"], top["overlap"], NlmParams(**nlm), StripParams(**strip))
        unknown = [m for m in p.models if m not in model_names()]
        if unknown:  # none at all is allowed: the baselines alone
            raise DenoiseError(
                f"params.yaml evaluate.models: unknown {', '.join(unknown)}; known: "
                f"{', '.join(model_names())}"
            )
        try:  # here, not after the minutes the NLM grid takes
            check_tiling(p.tile, p.overlap)
        except DenoiseError as e:
            raise DenoiseError(f"params.yaml evaluate: {e}") from None
        for key in ("crop", "zoom"):  # a crop <= 0 would cut wrong strips, a zoom crash
            if getattr(p.strip, key) < 1:
                raise DenoiseError(
                    f"params.yaml evaluate.strip.{key}: must be >= 1, got {getattr(p.strip, key)}"
                )
        if not p.nlm.h or not p.nlm.h_color or p.nlm.val_patches < 1:
            raise DenoiseError(
                "params.yaml evaluate.nlm: h and h_color need at least one "
                "value and val_patches must be >= 1"
            )
        if not positive_finite(*p.nlm.h, *p.nlm.h_color):
            raise DenoiseError(
                f"params.yaml evaluate.nlm: h {list(p.nlm.h)} and h_color {list(p.nlm.h_color)} "
                "must be positive and finite"
            )
        windows = (p.nlm.template, p.nlm.search)
        if not all(w >= 1 and w % 2 for w in windows) or p.nlm.search < p.nlm.template:
            raise DenoiseError(  # search 0 would leave the noisy input as the "nlm" baseline
                f"params.yaml evaluate.nlm: template {p.nlm.template} and search "
                f"{p.nlm.search} must be odd sizes >= 1, search >= template"
            )
        return p


@dataclass
class ImageRecord:
    """One method on one test image."""

    image: str
    method: str
    score: Score
    seconds_per_mp: float | None
    groups: dict[str, str] = field(default_factory=dict)


GROUPINGS = {
    "by_iso": lambda i: sidd_layout.iso_band(i.iso),
    "by_brightness": lambda i: i.brightness,
    "by_phone": lambda i: i.phone,
}


def summarise(records: Sequence[ImageRecord], methods: Sequence[str]) -> dict[str, Any]:
    """Mean PSNR/SSIM per method, overall and per ISO band, brightness and phone."""

    def means(rs: Sequence[ImageRecord]) -> dict[str, float | None]:
        return {
            "psnr": _num(_mean(r.score.psnr for r in rs)),
            "ssim": _num(_mean(r.score.ssim for r in rs)),
        }

    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in records if r.method == method]
        entry: dict[str, Any] = means(mine)
        for grouping in GROUPINGS:
            keys = sorted({r.groups[grouping] for r in mine if grouping in r.groups})
            if keys:
                entry[grouping] = {
                    k: means([r for r in mine if r.groups[grouping] == k]) for k in keys
                }
        out[method] = entry
    return out


def group_sizes(records: Sequence[ImageRecord]) -> dict[str, dict[str, int]]:
    """How many test images each ISO band / brightness / phone group holds."""
    first = {r.image: r.groups for r in records}
    return {
        g: {
            k: sum(gs.get(g) == k for gs in first.values())
            for k in sorted({gs[g] for gs in first.values() if g in gs})
        }
        for g in GROUPINGS
        if any(g in gs for gs in first.values())
    }


def _val_samples(val_dir: Path, count: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` evenly spaced patches of the val patch store (deterministic)."""
    noisy, clean = read_patch_store(val_dir)
    idx = evenly_spaced(len(noisy), count)
    return [np.array(noisy[i]) for i in idx], [np.array(clean[i]) for i in idx]


def _per_image_csv(records: Sequence[ImageRecord]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    groupings = list(GROUPINGS)
    writer.writerow(["image", "method", "psnr", "ssim", *groupings])
    for r in records:
        writer.writerow(
            [
                r.image,
                r.method,
                f"{r.score.psnr:.4f}",
                f"{r.score.ssim:.4f}",
                *(r.groups.get(g, "") for g in groupings),
            ]
        )
    return buf.getvalue().encode()


def _timed(denoiser: Denoiser, img: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = denoiser(img)
    return out, (time.perf_counter() - start) / (img.shape[0] * img.shape[1] / 1e6)


def evaluate(
    split_dir: str | Path,
    checkpoints: Mapping[str, str | Path],
    params: EvalParams,
    *,
    metrics_path: str | Path,
    speed_path: str | Path,
    plots_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the noisy input, tuned NLM and every checkpoint on ``split_dir/test``.

    Writes ``metrics_path`` (deterministic PSNR/SSIM summary), ``speed_path`` (seconds per
    megapixel, which varies run to run, kept apart so the summary's hash is stable) and in
    ``plots_dir``: ``psnr_by_iso.png``, ``per_image.csv`` and ``strips/<image>.png``.
    Returns the summary written to ``metrics_path``.
    """
    split_dir, plots_dir = Path(split_dir), Path(plots_dir)
    pairs = find_pairs(split_dir / "test")
    backends = {name: open_backend("torch", path) for name, path in checkpoints.items()}
    val_noisy, val_clean = _val_samples(split_dir / "val", params.nlm.val_patches)
    h, hc, val_psnr = tune_nlm(
        val_noisy,
        val_clean,
        params.nlm.h,
        params.nlm.h_color,
        template=params.nlm.template,
        search=params.nlm.search,
        progress=progress,
    )
    methods: dict[str, Denoiser] = {
        "noisy": lambda img: img,
        "nlm": partial(
            nlm_denoise, h=h, h_color=hc, template=params.nlm.template, search=params.nlm.search
        ),
    }
    for name, backend in backends.items():
        methods[name] = tiled_denoiser(backend, tile=params.tile, overlap=params.overlap)
        methods[name](np.zeros((32, 32, 3), np.uint8))  # warm-up, so timings are steady

    records: list[ImageRecord] = []
    clear_stale_staging(plots_dir / "strips")  # a killed run's (SIGKILL: nothing unwound)
    with atomic_path(plots_dir / "strips") as strips_dir:
        strips_dir.mkdir()
        for pair in tqdm(pairs, desc="evaluate", unit="image", disable=not progress):
            noisy, clean = read_pair(pair)
            groups = {g: fn(pair.instance) for g, fn in GROUPINGS.items()} if pair.instance else {}
            y, x = detailed_crop(clean, params.strip.crop)
            c = min(params.strip.crop, *clean.shape[:2])
            panels = []
            for method, denoiser in methods.items():
                out, s_per_mp = _timed(denoiser, noisy)
                score = score_image(out, clean)
                records.append(
                    ImageRecord(
                        pair.name, method, score, None if method == "noisy" else s_per_mp, groups
                    )
                )
                panels.append((f"{method} {score.psnr:.2f} dB", out[y : y + c, x : x + c]))
            panels.append(("clean", clean[y : y + c, x : x + c]))
            comparison_strip(strips_dir / f"{pair.name}.png", panels, zoom=params.strip.zoom)

    summary = {
        "test_images": len(pairs),
        "images_per_group": group_sizes(records),
        "nlm": {"h": h, "h_color": hc, "val_psnr": _num(val_psnr), "val_patches": len(val_noisy)},
        "methods": summarise(records, list(methods)),
    }
    write_json(metrics_path, summary)
    write_bytes_atomic(plots_dir / "per_image.csv", _per_image_csv(records))
    psnr_bar_chart(plots_dir / "psnr_by_iso.png", _psnr_by_iso(summary["methods"]))
    write_json(speed_path, _speed(records, list(methods), params.tile))
    return summary


def _psnr_by_iso(methods: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{method: {"all" | ISO band: PSNR}}`` for the bar chart (NaN where undefined)."""
    chart = {}
    for method, entry in methods.items():
        bands = entry.get("by_iso", {})
        values = {
            "all": entry["psnr"],
            **{b: bands[b]["psnr"] for b, _ in sidd_layout.ISO_BANDS if b in bands},
        }
        chart[method] = {k: math.nan if v is None else v for k, v in values.items()}
    return chart


def _speed(records: Sequence[ImageRecord], methods: Sequence[str], tile: int) -> dict[str, Any]:
    """Seconds per megapixel per method (mean and median over test images) and the setup."""
    per_method = {}
    for method in methods:
        times = [r.seconds_per_mp for r in records if r.method == method]
        times = [t for t in times if t is not None]
        if times:
            per_method[method] = {
                "mean": _num(_mean(times)),
                "median": _num(statistics.median(times)),
            }
    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "tile": tile,
        "seconds_per_megapixel": per_method,
    }
