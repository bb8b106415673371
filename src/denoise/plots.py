"""The evaluate stage's pictures: a PSNR bar chart and side-by-side comparison strips.

Both are deterministic for the same inputs (matplotlib's Agg backend with no timestamp, OpenCV
text), so re-running the stage on the same models rewrites the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from denoise.fileio import atomic_path, write_rgb8


def psnr_bar_chart(
    path: str | Path,
    psnr: Mapping[str, Mapping[str, float]],
    *,
    title: str = "PSNR on the test split",
) -> None:
    """Grouped bars: one group per key of the inner mappings (e.g. "all", ISO bands), one bar
    per method (outer key), labelled with its value in dB."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    methods = list(psnr)
    groups = list(dict.fromkeys(g for per_group in psnr.values() for g in per_group))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(groups), 4.0), dpi=100)
    for i, method in enumerate(methods):
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        values = [psnr[method].get(group, float("nan")) for group in groups]
        bars = ax.bar(xs, values, width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("PSNR (dB)")
    finite = [v for per_group in psnr.values() for v in per_group.values() if np.isfinite(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 3.0), max(finite) + 2.0)
    ax.set_title(title)
    ax.legend(
        fontsize=8,
        ncols=min(len(methods), 6),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        frameon=False,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


def detailed_crop(img: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most fine detail.

    Detail is the variance of the Laplacian of the grey image, tried on a grid with half-window
    steps; ties go to the first window, so the choice is deterministic.
    """
    h, w = img.shape[:2]
    size = min(size, h, w)
    lap = np.abs(
        cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F)
    )
    step = max(size // 2, 1)
    best, corner = -1.0, (0, 0)
    for y in [*range(0, h - size, step), h - size]:
        for x in [*range(0, w - size, step), w - size]:
            score = float(lap[y : y + size, x : x + size].var())
            if score > best:
                best, corner = score, (y, x)
    return corner


def comparison_strip(
    path: str | Path, panels: Sequence[tuple[str, np.ndarray]], *, zoom: int = 3
) -> None:
    """Write labelled panels (HWC uint8 RGB crops of one size) side by side, each enlarged
    ``zoom`` times with nearest-neighbour so the noise stays visible."""
    header, gap = 22, 4
    tiles = []
    for label, crop in panels:
        big = cv2.resize(crop, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        band = np.full((header, big.shape[1], 3), 255, np.uint8)
        cv2.putText(
            band, label, (4, header - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
        tiles.append(np.vstack([band, big]))
        tiles.append(np.full((tiles[-1].shape[0], gap, 3), 255, np.uint8))
    write_rgb8(path, np.hstack(tiles[:-1]))
