"""DVCLive tracking of a training run, kept consistent across resumes.

Writes under ``dvclive/<model>/``: ``params.yaml``, ``metrics.json`` (latest values),
``plots/metrics/{train/loss,train/lr,val/psnr,val/ssim}.tsv`` and one validation strip
``plots/images/val/<iteration, 7 digits>.png`` (noisy | denoised | clean) per validation. The
step is the training iteration. ``dvcyaml=None`` and ``save_dvc_exp=False``: inside ``dvc
repro`` the pipeline's dvc.yaml declares these files, DVCLive must not rewrite it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from denoise.fileio import write_bytes_atomic


class Tracker:
    """Rank 0 logs through DVCLive; other ranks get a tracker that does nothing."""

    def __init__(self, live_dir: Path | None, params: dict[str, Any], resume_step: int) -> None:
        self.live = None
        if live_dir is None:
            return
        from dvclive import Live  # imported lazily: only the logging rank needs it

        resume = resume_step > 0 and live_dir.is_dir()
        if resume:
            _truncate(live_dir, resume_step)
            _drop_torn(live_dir)
        self.live = Live(dir=str(live_dir), resume=resume, dvcyaml=None, save_dvc_exp=False)
        self.live.log_params(params)

    def log(
        self,
        step: int,
        metrics: dict[str, float],
        image: np.ndarray | None = None,
        image_name: str = "",
    ) -> None:
        if self.live is None:
            return
        self.live.step = step
        for k, v in metrics.items():
            self.live.log_metric(k, v)
        if image is not None:
            self.live.log_image(image_name, image)
        self.live.next_step()

    def summary(self, metrics: dict[str, float]) -> None:
        """Values that are not curves (e.g. the noisy input's PSNR), into metrics.json only."""
        if self.live is None:
            return
        for k, v in metrics.items():
            self.live.log_metric(k, v, plot=False)

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def _drop_torn(live_dir: Path) -> None:
    """Remove DVCLive's summary files if a kill cut one short (DVCLive rewrites them in place
    at every step): resuming reads them, and would fail on every later run. Every value in
    them is logged again before the run ends."""
    for name, parse in (("metrics.json", json.loads), ("params.yaml", yaml.safe_load)):
        path = live_dir / name
        try:
            whole = isinstance(parse(path.read_text()), dict)  # empty, or cut in a key: not
        except FileNotFoundError:
            continue
        except (ValueError, yaml.YAMLError, UnicodeDecodeError):
            whole = False
        if not whole:
            print(f"note: {path} was cut short; written anew")
            path.unlink()


def _whole(row: dict[str | None, Any]) -> bool:
    """A row with every column and a step number: not the last line of a file cut short."""
    return None not in row and None not in row.values() and str(row["step"]).isdigit()


def _kept_curves(live_dir: Path, step: int) -> dict[Path, bytes | None]:
    """Each curve file's contents as a resume at ``step`` keeps them: the rows up to ``step``,
    rewritten (``None``: a file without a ``step`` column, which cannot be cut).

    The columns come from the header, not from a row: a file whose rows all come later keeps
    its header (without it DVCLive would append headless rows).
    """
    kept: dict[Path, bytes | None] = {}
    for tsv in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")
            fields = list(reader.fieldnames or [])
            if "step" not in fields:
                kept[tsv] = None
                continue
            rows = [r for r in reader if _whole(r) and int(r["step"]) <= step]
        out = io.StringIO()
        # DVCLive's own line ending (csv's default is \r\n): a resumed history must be
        # byte-identical to an uninterrupted one, or dvc.lock records a different hash.
        w = csv.DictWriter(out, fieldnames=fields, delimiter="\t", lineterminator=os.linesep)
        w.writeheader()
        w.writerows(rows)
        kept[tsv] = out.getvalue().encode()
    return kept


def _images(live_dir: Path) -> list[tuple[int, Path]]:
    """The validation images, with the step each was logged at."""
    images = live_dir / "plots" / "images"
    found = images.rglob("*.png") if images.is_dir() else []
    return sorted((int(png.stem), png) for png in found if png.stem.isdigit())


def history_digest(live_dir: Path, step: int) -> str:
    """A hash of the history a resume at ``step`` keeps of ``live_dir``.

    Saved with each resume state: on resuming, a folder that no longer holds the interrupted
    run's history (restored from git, deleted) would otherwise be cut and continued, giving
    one run's curves joined to another's, or curves that start at the resume step.
    """
    h = hashlib.sha256()
    for tsv, data in _kept_curves(live_dir, step).items():
        if data is not None and data.count(b"\n") <= 1:
            continue  # a header alone: a curve first logged after ``step``, as if not there
        h.update(tsv.relative_to(live_dir).as_posix().encode() + b"\0" + (data or b"") + b"\0")
    for logged, png in _images(live_dir):
        if logged <= step:
            h.update(png.relative_to(live_dir).as_posix().encode() + b"\0" + png.read_bytes())
    return h.hexdigest()[:16]


def _truncate(live_dir: Path, step: int) -> None:
    """Drop what an interrupted run logged after its last resume state (steps > ``step``).

    A curve file without a ``step`` column is removed; DVCLive starts it anew. Rewritten
    atomically.
    """
    for tsv, data in _kept_curves(live_dir, step).items():
        if data is None:
            tsv.unlink()
        else:
            write_bytes_atomic(tsv, data)
    for logged, png in _images(live_dir):
        if logged > step:
            png.unlink()
