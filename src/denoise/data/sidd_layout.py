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

_NAME = re.compile(
    r"^(?P<id>\d{4})_(?P<scene>\d{3})_(?P<phone>[A-Z0-9]{2})_(?P<iso>\d{5})_"
    r"(?P<shutter>\d{5})_(?P<illuminant>\d{4})_(?P<brightness>[LNH])$"
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
        m = _NAME.match(name)
        if m is None:
            raise DenoiseError(
                f"{name}: not a SIDD instance name "
                "(<id>_<scene>_<phone>_<ISO>_<shutter>_<illuminant>_<L|N|H>)"
            )
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


def iso_band(iso: int) -> str:
    """Coarse ISO band for per-condition breakdowns (SIDD spans ISO 50 to 10000)."""
    if iso < 400:
        return "ISO<400"
    if iso < 1600:
        return "ISO400-1599"
    return "ISO>=1600"


def data_dir(root: str | Path) -> Path:
    """The ``Data`` folder under ``root``: ``root/Data`` or ``root/SIDD_Small_sRGB_Only/Data``."""
    root = Path(root)
    for cand in (root / DATA_DIR, root / ARCHIVE_ROOT / DATA_DIR, root):
        if cand.is_dir() and any(_NAME.match(p.name) for p in cand.iterdir() if p.is_dir()):
            return cand
    raise DenoiseError(f"{root}: no SIDD-layout instances found (expected {root}/Data/<instance>/)")


def list_instances(root: str | Path) -> list[tuple[Instance, Path]]:
    """All ``(instance, folder)`` pairs under a SIDD-layout root, sorted by instance name."""
    base = data_dir(root)
    found = [
        (Instance.parse(p.name), p)
        for p in sorted(base.iterdir())
        if p.is_dir() and _NAME.match(p.name)
    ]
    return found
