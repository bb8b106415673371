"""dvc.yaml lists, for every stage, each project module its script imports (transitively).

A module missing from a stage's ``deps`` means an edit to it does not re-run the stage, so
``dvc status`` says "up to date" about outputs the current code would not produce.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# Modules that cannot change what a stage writes: the error type, the params.yaml reader and
# checker (the values themselves are DVC params), the layout constants (a moved path must be
# moved in dvc.yaml too, which DVC tracks), the stage runner and its SIGTERM handler (how a
# stage stops, not what it writes), package docstrings.
EXEMPT = {
    "src/denoise/errors.py",
    "src/denoise/signals.py",
    "src/denoise/params.py",
    "src/denoise/paths.py",
    "stages/common.py",
    "src/denoise/__init__.py",
    "src/denoise/data/__init__.py",
    "src/denoise/models/__init__.py",
}


def _module_file(name: str) -> Path | None:
    if name == "common":
        return REPO / "stages" / "common.py"
    base = REPO / "src" / Path(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Absolute imports anywhere in the file (function-level ones too), as dotted names, with
    their parent packages (whose ``__init__`` runs first). Modules imported by a name in a
    string (``infer``'s backends for a ``--backend`` the stage may not use) are not followed:
    a stage that opens one lists it by hand."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from denoise.data import synthetic_camera`` imports a module by attribute name.
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    names |= {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return {n for n in names if n.split(".")[0] in ("denoise", "common")}


def _sibling_files(path: Path) -> set[Path]:
    """Python files beside ``path`` that it names as data (``Path(__file__).with_name(
    "python_model.py")``: a template copied into the Triton repository)."""
    return {
        path.with_name(node.value)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"\w+\.py", node.value)
        and path.with_name(node.value).is_file()
    }


def import_closure(script: Path) -> set[str]:
    """Repository-relative paths of the script and every project file it reaches."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [f for f in map(_module_file, _imported_modules(path)) if f is not None]
        todo += _sibling_files(path)
    return {p.relative_to(REPO).as_posix() for p in seen}


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(stage: str) -> None:
    spec = STAGES[stage]
    script = REPO / spec["cmd"].split()[1]
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    missing = sorted(p for p in import_closure(script) - EXEMPT if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} runs code it does not depend on: {missing}"


def test_the_closure_follows_function_level_imports() -> None:
    # The smoke test imports the SIDD layout and the metrics inside functions; the walk must
    # still reach them.
    closure = import_closure(REPO / "stages" / "triton_smoke.py")
    assert "src/denoise/data/sidd_layout.py" in closure and "src/denoise/metrics.py" in closure


def test_the_closure_follows_packages_and_templates() -> None:
    closure = import_closure(REPO / "stages" / "evaluate.py")
    assert "src/denoise/fused/__init__.py" in closure  # a package's __init__ runs first
    export = import_closure(REPO / "stages" / "export_onnx.py")
    assert "src/denoise/triton/python_model.py" in export  # copied into the repository


def test_python_bytecode_is_no_change_to_a_dependency() -> None:
    """Any import with PYTHONDONTWRITEBYTECODE unset writes __pycache__ into the folders that
    are dependencies; DVC must not count it, or every stage after them would re-run."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        for path in (
            "src/denoise/models/__pycache__/nafnet.cpython-311.pyc",
            "src/denoise/training/__pycache__",
            "src/denoise/fused/x.pyc",
        ):
            assert repo.dvcignore.is_ignored(repo.fs, repo.fs.join(repo.root_dir, path)), path
        assert not repo.dvcignore.is_ignored(
            repo.fs, repo.fs.join(repo.root_dir, "src/denoise/models/nafnet.py")
        )


def test_the_download_stage_watches_the_folder_of_ones_own_pairs() -> None:
    """data.source: folder copies data.folder.path: DVC must see a pair added or changed
    there (dvc.yaml fills the path in from params.yaml), and the default folder must exist,
    or every `dvc repro` would stop at a missing dependency."""
    assert "${data.folder.path}" in STAGES["download"]["deps"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert (REPO / params["data"]["folder"]["path"]).is_dir()
