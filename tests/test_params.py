"""params.yaml reading and section checking: every mistake is one line naming the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from denoise.errors import DenoiseError
from denoise.params import checked_section, load_params

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Section:
    lr: float
    iters: int = 10


def test_the_project_params_load_and_a_missing_section_is_named() -> None:
    params = load_params(REPO / "params.yaml")
    assert params["model"] in ("nafnet", "dncnn")
    with pytest.raises(DenoiseError, match=r"params\.yaml: no 'nope' entry"):
        params["nope"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"missing\.yaml: not found"),
        ("a: [1,", r"bad\.yaml: not valid YAML"),
        ("- 1\n- 2\n", r"bad\.yaml: expected a mapping"),
        ("a: 1\na: 2\n", r"bad\.yaml: not valid YAML \(.*duplicate key"),
    ],
)
def test_unreadable_params_are_one_line(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / ("missing.yaml" if text is None else "bad.yaml")
    if text is not None:
        path.write_text(text)
    with pytest.raises(DenoiseError, match=message):
        load_params(path)


def test_params_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes("# r\u00e9sum\u00e9\nmodel: nafnet\n".encode("latin-1"))
    with pytest.raises(
        DenoiseError, match=r"params\.yaml: not UTF-8 text \(invalid .* at byte 3\)$"
    ):
        load_params(path)


def test_checked_section_names_typos_and_missing_keys() -> None:
    assert checked_section(Section, {"lr": 0.1}, "train") == {"lr": 0.1}
    with pytest.raises(DenoiseError, match=r"params\.yaml train: missing lr; unknown lr_rate"):
        checked_section(Section, {"lr_rate": 0.1}, "train")


def test_floats_without_a_dot_are_floats(tmp_path: Path) -> None:
    """``dvc exp run -S train.nafnet.lr=5e-5`` writes ``lr: 5e-05``: YAML 1.2 reads a float
    there, where PyYAML's YAML 1.1 would read a string."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 0.001\n  eta_min: 1.0e-7\n  iters: 10\n  tag: 1e\n")
    apply_overrides(str(path), ["train.lr=5e-5", "train.eta_min=1e-6"])
    assert "5e-05" in path.read_text()  # what DVC wrote, no dot
    train = load_params(path)["train"]
    assert train == {"lr": 5e-5, "eta_min": 1e-6, "iters": 10, "tag": "1e"}
    assert isinstance(train["iters"], int)
    cases = [("-2E+3", -2000.0), ("1.5", 1.5), ("0x10", 16), ("1.0e5", 1e5)]
    cases += [("1.e-2", 0.01), ("e5", "e5"), ("1.2.3", "1.2.3")]
    for text, value in cases:
        path.write_text(f"v: {text}\n")
        assert load_params(path)["v"] == value, text


@pytest.mark.parametrize(
    "text",
    ["010", "1:30", "no", "yes", "0o17", "1_000", "5e-05", ".5e1", "~", "2026-11-28", ".nan"],
)
def test_params_are_read_as_dvc_reads_them(tmp_path: Path, text: str) -> None:
    """``dvc params diff`` and ``dvc exp show`` show what DVC reads: the stages must use the
    same values (YAML 1.1 reads ``010`` as 8, ``1:30`` as 90, ``no`` as false)."""
    from dvc.utils.serialize import parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(f"v: {text}\n")
    ours, dvcs = load_params(path)["v"], parse_yaml(path.read_text(), path)["v"]
    assert type(ours) is type(dvcs) and str(ours) == str(dvcs), (ours, dvcs)


@dataclasses.dataclass
class Typed:
    iters: int = 1
    lr: float = 0.1
    amp: bool = True
    name: str = "a"
    shape: tuple[int, int] = (1, 1)
    sizes: tuple[tuple[int, int], ...] = ()
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    binary: str | None = None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("iters", "4000", "iters: expected an integer, got '4000'"),
        ("iters", 2.5, "iters: expected an integer, got 2.5"),
        ("iters", True, "iters: expected an integer, got True"),
        ("lr", None, "lr: expected a number, got None"),
        ("lr", "1e-3x", "lr: expected a number, got '1e-3x'"),
        ("lr", 10**400, "lr: expected a finite number, got an integer of 401 digits"),
        ("amp", 1, "amp: expected true or false, got 1"),
        ("name", 3, "name: expected a string, got 3"),
        ("shape", 0.9, "shape: expected a list, got 0.9"),
        ("shape", [1, 2, 3], r"shape: expected a list of 2, got \[1, 2, 3\]"),
        ("sizes", [[1, 2], [3, "x"]], r"sizes: expected an integer, got 'x' in \[3, 'x'\] in"),
        ("weights", {"train": "a lot"}, "weights: expected a number, got 'a lot' in"),
        ("binary", 5, "binary: expected a string, got 5"),
    ],
)
def test_values_of_the_wrong_type_are_one_line_naming_the_key(
    key: str, value: object, message: str
) -> None:
    with pytest.raises(DenoiseError, match=rf"^params\.yaml train\.nafnet\.{message}"):
        checked_section(Typed, {key: value}, "train.nafnet")


def test_values_of_the_right_type_are_kept() -> None:
    """Values come back of their field's kind: an integral float as an int (``dvc exp run -S
    train.nafnet.iters=2e5`` writes 200000.0), an int as a float, a YAML list as a tuple (also
    inside lists and mappings); None where None is allowed."""
    section = {"iters": 2e5, "lr": 1, "amp": False, "shape": [2, 3.0], "binary": None}
    section |= {"sizes": [[1, 2]], "weights": {"train": 1, "val": 0.5}}
    checked = checked_section(Typed, section, "train")
    assert checked == {
        **section,
        "iters": 200000,
        "lr": 1.0,
        "shape": (2, 3),
        "sizes": ((1, 2),),
        "weights": {"train": 1.0, "val": 0.5},
    }
    kinds = {"iters": int, "lr": float, "shape": tuple}
    assert all(type(checked[key]) is kind for key, kind in kinds.items())
    assert [type(v) for v in (*checked["shape"], *checked["sizes"][0])] == [int] * 4
    assert type(checked["sizes"][0]) is tuple and type(checked["weights"]["train"]) is float
