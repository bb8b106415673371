"""SIDD instance names and folder discovery."""

from pathlib import Path

import pytest

from denoise.data.pairs import find_pairs
from denoise.data.sidd_layout import Instance, data_dir, iso_band, list_instances
from denoise.errors import DenoiseError


def test_name_round_trip() -> None:
    name = "0001_001_S6_00100_00060_3200_L"
    inst = Instance.parse(name)
    assert (inst.id, inst.scene, inst.phone, inst.iso, inst.brightness) == (1, 1, "S6", 100, "L")
    assert inst.name == name


@pytest.mark.parametrize("bad", ["0001_001_S6_00100_00060_3200_X", "foo", "1_1_S6_100_60_3200_L"])
def test_bad_names_are_rejected(bad: str) -> None:
    with pytest.raises(DenoiseError, match=bad):
        Instance.parse(bad)


def test_iso_bands_are_ordered() -> None:
    assert [iso_band(i) for i in (100, 800, 3200)] == ["ISO<400", "ISO400-1599", "ISO>=1600"]


def test_finds_data_under_archive_root(tmp_path: Path) -> None:
    base = tmp_path / "SIDD_Small_sRGB_Only" / "Data"
    for n in ("0002_001_GP_00800_00100_5500_N", "0001_001_S6_00100_00060_3200_L"):
        (base / n).mkdir(parents=True)
    (base / "notes").mkdir()
    assert data_dir(tmp_path) == base
    assert [i.id for i, _ in list_instances(tmp_path)] == [1, 2]
    with pytest.raises(DenoiseError, match="no SIDD-layout instances"):
        data_dir(tmp_path / "SIDD_Small_sRGB_Only" / "Data" / "notes")


@pytest.mark.parametrize("name", ["0004_004_S6_00100_00060_3200_l", "0006_006_S6_102400_1_3200_L"])
def test_a_pair_under_a_mistyped_name_is_refused_not_dropped(tmp_path: Path, name: str) -> None:
    """A hand-made folder of one's own pairs: a typo in a name (a lower-case brightness, a
    6-digit ISO) would otherwise leave the pair out of training and of the scores unsaid."""
    base = tmp_path / "Data"
    (base / "0001_001_S6_00100_00060_3200_L").mkdir(parents=True)
    (base / name).mkdir()
    (base / name / "GT_SRGB_010.PNG").write_bytes(b"")
    for find in (list_instances, find_pairs):  # also through `denoise score`'s discovery
        with pytest.raises(DenoiseError, match=rf"^{base / name}: holds a pair but is not named"):
            find(tmp_path)


@pytest.mark.parametrize(
    "name", ["0001_001_S6_00100_00060_3200_L\n", "\uff10001_001_S6_00100_00060_3200_L"]
)
def test_a_name_is_matched_whole_and_in_ascii(name: str) -> None:
    """A trailing newline, or a fullwidth digit that int() reads as its ASCII twin (two
    folders, one instance), is not a SIDD instance name."""
    with pytest.raises(DenoiseError, match="not a SIDD instance name"):
        Instance.parse(name)
