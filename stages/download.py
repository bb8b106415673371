"""Stage download: params `data` -> data/raw (SIDD layout), from the synthetic camera or SIDD.

`data.source: synthetic` simulates smartphone pairs offline; `data.source: sidd` downloads (or
reuses) the verified SIDD-Small sRGB archive in `data.sidd.cache_dir` and extracts it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import PARAMS_FILE, load_params, run_stage

from denoise.errors import DenoiseError
from denoise.params import check_keys
from denoise.paths import RAW_DIR


def from_synthetic(cfg: dict[str, Any], out_dir: Path) -> None:
    # Imported here so the sidd path does not pay for (or depend on) the simulator.
    from denoise.data.synthetic_camera import generate_dataset

    made = generate_dataset(
        out_dir,
        instances=int(cfg["instances"]),
        height=int(cfg["height"]),
        width=int(cfg["width"]),
        seed=int(cfg["seed"]),
    )
    print(f"synthetic camera: {len(made)} instances in {out_dir}")


def from_sidd(cfg: dict[str, Any], out_dir: Path) -> None:
    from denoise.data.sidd_download import fetch_sidd

    fetch_sidd(
        str(cfg["url"]),
        size=int(cfg["size"]),
        md5=str(cfg["md5"]),
        cache_dir=Path(cfg.get("cache_dir", "downloads")),
        out_dir=out_dir,
    )
    print(f"SIDD-Small sRGB extracted to {out_dir}")


# source name -> (function, the keys its params section must have, those it may have)
SOURCES: dict[
    str, tuple[Callable[[dict[str, Any], Path], None], tuple[str, ...], tuple[str, ...]]
] = {
    "synthetic": (from_synthetic, ("instances", "height", "width", "seed"), ()),
    "sidd": (from_sidd, ("url", "size", "md5"), ("cache_dir",)),
}


def main(params_file: Path = PARAMS_FILE, out_dir: Path = RAW_DIR) -> None:
    data = load_params(params_file).get("data") or {}
    source = data.get("source", "synthetic")
    if source not in SOURCES:
        raise DenoiseError(
            f"{params_file}: unknown data.source {source!r}; expected one of {', '.join(SOURCES)}"
        )
    make, required, optional = SOURCES[source]
    cfg = data.get(source) or {}
    # a typo is an error, not a silently ignored key
    check_keys(data, (), {"source", *SOURCES}, f"{params_file} data")
    check_keys(cfg, required, {*required, *optional}, f"{params_file} data.{source}")
    make(cfg, out_dir)


if __name__ == "__main__":
    run_stage(main)
