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
    ],
)
def test_unreadable_params_are_one_line(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / ("missing.yaml" if text is None else "bad.yaml")
    if text is not None:
        path.write_text(text)
    with pytest.raises(DenoiseError, match=message):
        load_params(path)


def test_checked_section_names_typos_and_missing_keys() -> None:
    assert checked_section(Section, {"lr": 0.1}, "train") == {"lr": 0.1}
    with pytest.raises(DenoiseError, match=r"params\.yaml train: missing lr; unknown lr_rate"):
        checked_section(Section, {"lr_rate": 0.1}, "train")
