"""Stage crop-split: data/raw -> data/split (patch stores, test images, manifest), metrics, plot."""

from __future__ import annotations

import logging
from pathlib import Path

from common import load_params, run_stage

from denoise.data.crop_split import SplitParams, build_split, sample_strip
from denoise.fileio import clear_stale_staging, write_json, write_rgb8
from denoise.paths import RAW_DIR, SPLIT_DIR

METRICS = Path("metrics/data.json")
STRIP = Path("plots/data/sample_strip.png")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = SplitParams.from_dict(load_params()["crop_split"])
    clear_stale_staging(SPLIT_DIR)  # what a killed run left: as large as the patches
    result = build_split(RAW_DIR, SPLIT_DIR, params)
    write_json(METRICS, result.metrics())
    write_rgb8(STRIP, sample_strip(result.splits["train"]))
    for split, summary in result.metrics().items():
        print(f"{split}: {summary}")


if __name__ == "__main__":
    run_stage(main)
