"""The SIDD-Small sRGB folder layout and instance naming: the one definition of both.

    <root>/Data/<instance>/GT_SRGB_010.PNG
    <root>/Data/<instance>/NOISY_SRGB_010.PNG

An instance name is ``<id>_<scene>_<phone>_<ISO>_<shutter>_<illuminant K>_<brightness>``,
e.g. ``0001_001_S6_00100_00060_3200_L``. The synthetic camera writes exactly this layout, so
every later stage reads real and simulated data through the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from denoise.errors import DenoiseError
from denoise.fileio import list_folder

GT_NAME = "GT_SRGB_010.PNG"
NOISY_NAME = "NOISY_SRGB_010.PNG"
DATA_DIR = "Data"
ARCHIVE_ROOT = "SIDD_Small_sRGB_Only"

PHONES = {
    "GP": "Google Pixel",
    "IP": "iPhone 7",
    "S6": "Samsung Galaxy S6 Edge",
    "N6": "Motorola Nexus 6",
    "G4": "LG G4",
}

NAME_FORMAT = "<id>_<scene>_<phone>_<ISO>_<shutter>_<illuminant>_<L|N|H>"
# Matched whole (fullmatch: no trailing newline) and in ASCII (no fullwidth digits, which
# int() would read as the same instance as their ASCII twin).
_NAME = re.compile(
    r"(?P<id>\d{4})_(?P<scene>\d{3})_(?P<phone>[A-Z0-9]{2})_(?P<iso>\d{5})_"
    r"(?P<shutter>\d{5})_(?P<illuminant>\d{4})_(?P<brightness>[LNH])",
    re.ASCII,
)


@dataclass(frozen=True)
class Instance:
    """One SIDD scene instance, parsed from its folder name."""

    id: int
    scene: int
    phone: str
    iso: int
    shutter: int
    illuminant: int
    brightness: str

    @property
    def name(self) -> str:
        return (
            f"{self.id:04d}_{self.scene:03d}_{self.phone}_{self.iso:05d}_"
            f"{self.shutter:05d}_{self.illuminant:04d}_{self.brightness}"
        )

    @classmethod
    def parse(cls, name: str) -> Instance:
        m = _NAME.fullmatch(name)
        if m is None:
            raise DenoiseError(f"{name}: not a SIDD instance name ({NAME_FORMAT})")
        g = m.groupdict()
        return cls(
            int(g["id"]),
            int(g["scene"]),
            g["phone"],
            int(g["iso"]),
            int(g["shutter"]),
            int(g["illuminant"]),
            g["brightness"],
        )


#: Coarse ISO bands for per-condition breakdowns (SIDD spans ISO 50 to 10000), low to high:
#: ``(label, first ISO above the band)``; the last band is open above.
ISO_BANDS: tuple[tuple[str, float], ...] = (
    ("ISO<400", 400),
    ("ISO400-1599", 1600),
    ("ISO>=1600", float("inf")),
)


def iso_band(iso: int) -> str:
    """The label of the :data:`ISO_BANDS` band that ``iso`` falls in."""
    return next(label for label, above in ISO_BANDS if iso < above)


def find_data_dir(root: str | Path) -> Path | None:
    """The ``Data`` folder under ``root`` (``root/Data``, ``root/SIDD_Small_sRGB_Only/Data``
    or ``root`` itself): the first that holds an instance folder; None if none does."""
    root = Path(root)
    for cand in (root / DATA_DIR, root / ARCHIVE_ROOT / DATA_DIR, root):
        if cand.is_dir() and any(_NAME.fullmatch(p.name) for p in list_folder(cand) if p.is_dir()):
            return cand
    return None


def data_dir(root: str | Path) -> Path:
    """:func:`find_data_dir`, an error naming ``root`` if there is none."""
    found = find_data_dir(root)
    if found is None:
        raise DenoiseError(
            f"{root}: no SIDD-layout instances found (expected {Path(root)}/<instance>/ or "
            f"{Path(root)}/Data/<instance>/)"
        )
    return found


def pair_paths(folder: Path) -> tuple[Path, Path]:
    """``(noisy, clean)`` of an instance folder, both checked to exist; a missing one is named,
    with a file of nearly that name (``noisy_srgb_010.png``) if the folder holds one."""
    paths = (folder / NOISY_NAME, folder / GT_NAME)
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return paths
    if len(missing) == 2:
        raise DenoiseError(f"{folder}: holds neither {NOISY_NAME} nor {GT_NAME}")
    (gone,) = missing
    near = [p.name for p in list_folder(folder) if p.name.lower() == gone.name.lower()]
    hint = f" ({near[0]} is not named exactly {gone.name})" if near else ""
    partner = GT_NAME if gone.name == NOISY_NAME else NOISY_NAME
    raise DenoiseError(f"{gone}: missing (the partner of {partner}){hint}")


def list_instances(root: str | Path) -> list[tuple[Instance, Path]]:
    """All ``(instance, folder)`` pairs under a SIDD-layout root, sorted by instance name."""
    base = data_dir(root)
    found = []
    for p in list_folder(base):
        if not p.is_dir():
            continue
        if _NAME.fullmatch(p.name):
            found.append((Instance.parse(p.name), p))
        elif (p / NOISY_NAME).exists() or (p / GT_NAME).exists():
            # a pair under a mistyped name: refused, not left out of training and scores
            raise DenoiseError(
                f"{p}: holds a pair but is not named like a SIDD instance ({NAME_FORMAT}, "
                "e.g. 0001_001_S6_00100_00060_3200_L)"
            )
    return found
