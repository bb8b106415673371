"""Where ``data/raw`` comes from (params ``data``): the built-in synthetic camera, the SIDD
archive downloaded (or reused), verified and extracted, or a folder of one's own pairs in the
SIDD layout, copied. All three write the SIDD layout."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from denoise.errors import DenoiseError
from denoise.fileio import atomic_path, clear_stale_staging, write_errors_named
from denoise.params import check_keys, checked_section


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
    cache_dir: str


@dataclass(frozen=True)
class FolderSource:
    """``data.folder``: a folder of one's own pairs in the SIDD layout (``pairs/README.md``).
    dvc.yaml lists ``path`` as a dependency of the download stage, so DVC sees a pair added,
    changed or removed there."""

    path: str


def from_folder(cfg: FolderSource, out_dir: Path) -> None:
    from tqdm import tqdm

    from denoise.data.sidd_layout import DATA_DIR, GT_NAME, NOISY_NAME, list_instances

    source = Path(cfg.path)
    if not source.is_dir():
        raise DenoiseError(f"params.yaml data.folder.path: {source}: not a folder")
    try:
        instances = list_instances(source)  # a pair under a mistyped name is an error too
    except DenoiseError as e:
        raise DenoiseError(f"params.yaml data.folder.path: {e}") from None
    for _, folder in instances:  # all checked before anything is copied
        for name, partner in ((NOISY_NAME, GT_NAME), (GT_NAME, NOISY_NAME)):
            if not (folder / name).is_file():
                raise DenoiseError(f"{folder / name}: missing (the partner of {partner})")
    with write_errors_named(out_dir), atomic_path(out_dir) as staged:
        for _, folder in tqdm(instances, desc="copy pairs", unit="pair"):
            (staged / DATA_DIR / folder.name).mkdir(parents=True)
            for name in (NOISY_NAME, GT_NAME):
                shutil.copyfile(folder / name, staged / DATA_DIR / folder.name / name)
    print(f"{len(instances)} pairs copied from {source} to {out_dir}")


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
    "folder": (FolderSource, from_folder),
}


def fetch_raw(data: Mapping[str, Any], out_dir: Path, where: str) -> None:
    """Make ``out_dir`` from the ``data`` params section (``where`` names it in errors)."""
    if not isinstance(data, Mapping):
        raise DenoiseError(f"{where} data: expected a mapping of keys, got {data!r}")
    source = data.get("source", "synthetic")
    if not isinstance(source, str) or source not in SOURCES:
        raise DenoiseError(
            f"{where}: unknown data.source {source!r}; expected one of {', '.join(SOURCES)}"
        )
    # a typo is an error, not a silently ignored key
    check_keys(data, (), {"source", *SOURCES}, f"{where} data")
    cls, make = SOURCES[source]
    cfg = cls(**checked_section(cls, data.get(source), f"data.{source}"))
    clear_stale_staging(out_dir)  # what a killed run left: as large as the data
    make(cfg, out_dir)
