"""Stage download: params `data` -> data/raw (SIDD layout), from the synthetic camera or SIDD.

`data.source: synthetic` simulates smartphone pairs offline; `data.source: sidd` downloads (or
reuses) the verified SIDD-Small sRGB archive in `data.sidd.cache_dir` and extracts it;
`data.source: folder` copies one's own SIDD-layout pairs from `data.folder.path`.
"""

from __future__ import annotations

from pathlib import Path

from common import PARAMS_FILE, load_params, run_stage

from denoise.data.sources import fetch_raw
from denoise.paths import RAW_DIR


def main(params_file: Path = PARAMS_FILE, out_dir: Path = RAW_DIR) -> None:
    fetch_raw(load_params(params_file).get("data") or {}, out_dir, str(params_file))


if __name__ == "__main__":
    run_stage(main)
