"""The committed dvc.lock describes one run of the committed pipeline.

``dvc metrics diff`` compares against it and the README's figures trace to the files it
records, so a lock stitched from different runs (a stage re-run without the stages after it,
a metrics file edited by hand, a param changed without ``dvc repro``) is a bug this catches.
Code dependencies are left to ``dvc status``: a docstring edit need not re-run the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
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


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dir_md5(root: Path, files: list[str]) -> str:
    """DVC's hash of a directory: the MD5 of the JSON list of its files' MD5s and paths."""
    entries = sorted(
        ({"md5": _md5(REPO / f), "relpath": Path(f).relative_to(root).as_posix()} for f in files),
        key=lambda e: e["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_committed_outputs_are_the_files_the_lock_records() -> None:
    """Uncached outputs (metrics, plots, DVCLive logs) live in git: they must be what DVC
    hashed. Cached outputs (data/, models/, the model files) are not in git and not checked."""
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    checked, differ = [], []
    for path, (stage, md5) in _outs().items():
        if md5.endswith(".dir"):
            files = [f for f in tracked if f.startswith(f"{path}/")]
            found = _dir_md5(Path(path), files) if files else None
        else:
            found = _md5(REPO / path) if path in tracked else None
        if found is None:
            continue
        checked.append(path)
        if found != md5:
            differ.append(f"{path} ({stage})")
    assert {"metrics/evaluate.json", "dvclive/nafnet", "plots/evaluate/strips"} <= set(checked)
    assert not differ, f"committed outputs differ from dvc.lock: {differ}"
