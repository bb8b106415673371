"""Stage download: params `data` -> data/raw (SIDD layout), from the synthetic camera or SIDD.

`data.source: synthetic` simulates smartphone pairs offline; `data.source: sidd` downloads (or
reuses) the verified SIDD-Small sRGB archive in `data.sidd.cache_dir` and extracts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import PARAMS_FILE, load_params, run_stage

from denoise.errors import DenoiseError
from denoise.fileio import clear_stale_staging
from denoise.params import check_keys, checked_section
from denoise.paths import RAW_DIR


@dataclass(frozen=True)
class SyntheticSource:
    """``data.synthetic``: how many pairs the built-in camera makes, their size, its seed."""

    instances: int
    height: int
    width: int
    seed: int


@dataclass(frozen=True)
class SiddSource:
    """``data.sidd``: where the archive comes from, what it must be, where it is kept."""

    url: str
    size: int
    md5: str
    cache_dir: str = "downloads"


def from_synthetic(cfg: SyntheticSource, out_dir: Path) -> None:
    # Imported here so the sidd path does not pay for (or depend on) the simulator.
    from denoise.data.synthetic_camera import generate_dataset

    made = generate_dataset(
        out_dir, instances=cfg.instances, height=cfg.height, width=cfg.width, seed=cfg.seed
    )
    print(f"synthetic camera: {len(made)} instances in {out_dir}")


def from_sidd(cfg: SiddSource, out_dir: Path) -> None:
    from denoise.data.sidd_download import fetch_sidd

    fetch_sidd(cfg.url, size=cfg.size, md5=cfg.md5, cache_dir=Path(cfg.cache_dir), out_dir=out_dir)
    print(f"SIDD-Small sRGB extracted to {out_dir}")


# source name -> (the params section's dataclass, the function that makes data/raw from it)
SOURCES: dict[str, tuple[type, Callable[[Any, Path], None]]] = {
    "synthetic": (SyntheticSource, from_synthetic),
    "sidd": (SiddSource, from_sidd),
}


def main(params_file: Path = PARAMS_FILE, out_dir: Path = RAW_DIR) -> None:
    data = load_params(params_file).get("data") or {}
    if not isinstance(data, dict):
        raise DenoiseError(f"{params_file} data: expected a mapping of keys, got {data!r}")
    source = data.get("source", "synthetic")
    if not isinstance(source, str) or source not in SOURCES:
        raise DenoiseError(
            f"{params_file}: unknown data.source {source!r}; expected one of {', '.join(SOURCES)}"
        )
    # a typo is an error, not a silently ignored key
    check_keys(data, (), {"source", *SOURCES}, f"{params_file} data")
    cls, make = SOURCES[source]
    cfg = cls(**checked_section(cls, data.get(source), f"data.{source}"))
    clear_stale_staging(out_dir)  # what a killed run left: as large as the data
    make(cfg, out_dir)


if __name__ == "__main__":
    run_stage(main)
