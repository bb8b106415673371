"""Where ``data/raw`` comes from (params ``data``): the built-in synthetic camera, the SIDD
archive downloaded (or reused), verified and extracted, or a folder of one's own pairs in the
SIDD layout, copied. All three write the SIDD layout."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from denoise.data.pairs import check_same_size
from denoise.data.sidd_layout import (
    DATA_DIR,
    GT_NAME,
    NAME_FORMAT,
    NOISY_NAME,
    Instance,
    find_data_dir,
    pair_paths,
)
from denoise.errors import DenoiseError
from denoise.fileio import (
    atomic_path,
    clear_stale_staging,
    list_folder,
    read_rgb8,
    write_errors_named,
)
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


def _link_refused(path: Path) -> DenoiseError:
    return DenoiseError(
        f"{path}: a symbolic link; DVC does not look through links, so a change there would "
        "go unseen: copy what it points to in"
    )


def own_pairs(source: Path) -> list[tuple[str, Path, Path]]:
    """``(name, noisy, clean)`` of every pair under ``source`` (``<source>/<instance>/`` or
    ``<source>/Data/<instance>/``), each read and checked: nothing is left out without a word.
    Refused, naming the culprit: a folder that is not a pair folder (a misnamed pair, a batch
    of pairs one level down, pairs beside ``Data/``), a symbolic link to a folder (DVC does
    not hash through links, so a change there would go unseen), a missing or misnamed file,
    an image the pipeline cannot read, and two images of different sizes. Files (notes,
    ``.dvc`` files) and hidden entries are passed over."""
    base = find_data_dir(source)
    if base is None:  # none named right: look where they should be, to name what is there
        base = source / DATA_DIR if (source / DATA_DIR).is_dir() else source
    chain = [source]  # the folders from source down to base (Data/, or the archive's two)
    for part in base.relative_to(source).parts:
        chain.append(chain[-1] / part)
    for level in chain[1:]:
        if level.is_symlink():
            raise _link_refused(level)
    pairs = []
    for folder in sorted({entry for level in chain for entry in list_folder(level)} - {*chain}):
        if folder.name.startswith("."):
            continue
        if folder.is_symlink() and (folder.is_dir() or not folder.exists()):
            raise _link_refused(folder)
        if not folder.is_dir():
            continue
        if folder.parent != base:
            raise DenoiseError(f"{folder}: a folder beside {base}; keep every pair folder in it")
        try:
            Instance.parse(folder.name)
        except DenoiseError:
            raise DenoiseError(f"{folder}: not a pair folder's name ({NAME_FORMAT})") from None
        noisy, clean = pair_paths(folder)
        check_same_size(noisy, read_rgb8(noisy), clean, read_rgb8(clean))  # as crop-split reads
        pairs.append((folder.name, noisy, clean))
    if not pairs:
        raise DenoiseError(
            f"params.yaml data.folder.path: {source}: no pair folders (expected "
            f"{source}/{NAME_FORMAT}/ or {source}/{DATA_DIR}/.../ holding {NOISY_NAME} and "
            f"{GT_NAME}; pairs/README.md)"
        )
    return pairs


def from_folder(cfg: FolderSource, out_dir: Path) -> None:
    source = Path(cfg.path)
    if not source.is_dir():
        raise DenoiseError(f"params.yaml data.folder.path: {source}: not a folder")
    pairs = own_pairs(source)  # all checked before anything is copied
    with write_errors_named(out_dir), atomic_path(out_dir) as staged:
        for name, noisy, clean in tqdm(pairs, desc="copy pairs", unit="pair"):
            (staged / DATA_DIR / name).mkdir(parents=True)
            for src, dst_name in ((noisy, NOISY_NAME), (clean, GT_NAME)):
                try:
                    shutil.copyfile(src, staged / DATA_DIR / name / dst_name)
                except OSError as e:
                    if e.filename != str(src):
                        raise  # the destination's problem: named by write_errors_named
                    raise DenoiseError(f"{src}: cannot read ({e.strerror or e})") from None
    print(f"{len(pairs)} pairs copied from {source} to {out_dir}")


def from_synthetic(cfg: SyntheticSource, out_dir: Path) -> None:
    # Imported here so the sidd path does not pay for (or depend on) the simulator.
    from denoise.data.synthetic_camera import generate_dataset, settings_problem

    problem = settings_problem(cfg.instances, cfg.height, cfg.width, cfg.seed)
    if problem:  # named where the user changes it
        raise DenoiseError(f"params.yaml data.synthetic: {problem}")
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
    # a typo is an error, not a silently ignored key; no source is taken without a word
    check_keys(data, ("source",), {"source", *SOURCES}, f"{where} data")
    source = data["source"]
    if not isinstance(source, str) or source not in SOURCES:
        raise DenoiseError(
            f"{where}: unknown data.source {source!r}; expected one of {', '.join(SOURCES)}"
        )
    cls, make = SOURCES[source]
    cfg = cls(**checked_section(cls, data.get(source), f"data.{source}"))
    clear_stale_staging(out_dir)  # what a killed run left: as large as the data
    make(cfg, out_dir)
