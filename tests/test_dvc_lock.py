"""The committed dvc.lock describes one run of the committed pipeline.

``dvc metrics diff`` compares against it and the README's figures trace to the files it
records, so a lock stitched from different runs (a stage re-run without the stages after it,
a metrics file edited by hand, a param changed without ``dvc repro``) is a bug this catches.
Code dependencies are left to ``dvc status``: a docstring edit need not re-run the pipeline.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
# DVC writes the lock with ruamel (YAML 1.2): PyYAML would read its `1e-06` as a string.
_yaml = YAML(typ="safe")
LOCK = _yaml.load((REPO / "dvc.lock").read_text())["stages"]
PARAMS = _yaml.load((REPO / "params.yaml").read_text())


def _outs() -> dict[str, tuple[str, str]]:
    """Every output in the lock: path -> (stage, md5)."""
    return {out["path"]: (stage, out["md5"]) for stage, e in LOCK.items() for out in e["outs"]}


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree[key]
    return tree


@pytest.mark.parametrize("stage", sorted(LOCK))
def test_deps_on_other_stages_are_the_outputs_they_recorded(stage: str) -> None:
    outs = _outs()
    stale = [
        f"{dep['path']} (used {dep['md5']}, {outs[dep['path']][0]} wrote {outs[dep['path']][1]})"
        for dep in LOCK[stage].get("deps", [])
        if dep["path"] in outs and dep["md5"] != outs[dep["path"]][1]
    ]
    assert not stale, f"{stage} ran on other inputs than the lock's: {'; '.join(stale)}"


@pytest.mark.parametrize("stage", sorted(LOCK))
def test_params_are_those_of_params_yaml(stage: str) -> None:
    recorded = LOCK[stage].get("params", {}).get("params.yaml", {})
    changed = [key for key, value in recorded.items() if _lookup(PARAMS, key) != value]
    assert not changed, f"{stage} ran with other params than params.yaml's: {changed}"


def test_committed_output_files_are_those_the_lock_records() -> None:
    """Uncached file outputs (metrics, plots) live in git; they must be the files DVC hashed."""
    checked, differ = 0, []
    for path, (stage, md5) in _outs().items():
        if md5.endswith(".dir") or not (REPO / path).is_file():
            continue  # directories and cached outputs (data/, models/) are not in git
        checked += 1
        if hashlib.md5((REPO / path).read_bytes()).hexdigest() != md5:
            differ.append(f"{path} ({stage})")
    assert checked >= 5, f"only {checked} committed outputs found beside dvc.lock"
    assert not differ, f"committed files differ from dvc.lock: {differ}"
