"""pyproject.toml declares what the code imports, and requirements.txt pins all of it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# Imported only where a GPU set-up provides them (each import is guarded), or inside Triton's
# python backend process.
GPU_ONLY = {"tensorrt", "triton", "triton_python_backend_utils"}
# Imported only by the pipeline's stages (training's tracking, evaluate's charts), inside the
# functions that use them: declared in the ``pipeline`` extra, so `pip install .` for the
# `denoise` command does not pull DVC (DVCLive requires it).
PIPELINE_ONLY = {"dvclive", "matplotlib"}


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name.split(".")[0] for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module.split(".")[0]}
    return set()


def _run_on_import(node: ast.AST) -> list[ast.AST]:
    """``node`` and every statement below it that runs when its module is imported: all but
    the bodies of functions and lambdas (a class body, an ``if``, a ``try`` run)."""
    found = [node]
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            found += _run_on_import(child)
    return found


def _imported_modules(on_import_only: bool = False) -> set[str]:
    """Third-party modules imported anywhere in the package, or only by what runs when its
    modules are imported (not when a function is called)."""
    found: set[str] = set()
    for path in (REPO / "src" / "denoise").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in _run_on_import(tree) if on_import_only else ast.walk(tree):
            found |= _imported(node)
    return found - set(sys.stdlib_module_names) - {"denoise", "__future__"}


def test_pyproject_declares_every_package_the_code_imports() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    pipeline = {_name(r) for r in project["optional-dependencies"]["pipeline"]}
    distributions = importlib.metadata.packages_distributions()
    modules = _imported_modules()
    assert {"cv2", "PIL", "scipy", "tritonclient", *PIPELINE_ONLY} <= modules  # lazy ones too
    missing = {
        module: distributions.get(module)
        for module in modules - GPU_ONLY
        if not (declared | (pipeline if module in PIPELINE_ONLY else set()))
        & {_name(d) for d in distributions.get(module, [])}
    }
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
    assert not PIPELINE_ONLY & _imported_modules(on_import_only=True)


def test_requirements_pin_every_declared_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    wanted = [*project["dependencies"], *(r for extra in extras for r in extra)]
    lines = (REPO / "requirements.txt").read_text().splitlines()
    listed = {_name(line): line for line in lines if line.strip() and not line.startswith("#")}
    assert not [r for r in wanted if _name(r) not in listed], sorted(listed)
    # Exact pins, except numpy's range (< 2 for Triton's python backend).
    assert [line for line in listed.values() if "==" not in line] == ["numpy>=1.26,<2"]
    assert listed["torch"] == "torch==2.13.0"  # an unpinned torch pulls a multi-GB CUDA build


def _requirements(*files: str) -> dict[str, Requirement]:
    found = {}
    for file in files:
        for line in (REPO / file).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                requirement = Requirement(line)
                found[_name(requirement.name)] = requirement
    return found


def test_constraints_hold_every_pin_and_leave_torch_to_requirements() -> None:
    """constraints.txt (the tested environment, transitive packages too) satisfies every
    requirement (numpy's range too); torch stays out (its CPU and CUDA builds differ in their
    local version)."""
    constraints = _requirements("constraints.txt")
    wanted = _requirements("requirements.txt", "requirements-dev.txt")
    assert "torch" not in constraints and str(wanted.pop("torch").specifier) == "==2.13.0"
    assert len(constraints) > 2 * len(wanted)  # the transitive ones, not only the direct ones
    tested = {name: next(iter(c.specifier)).version for name, c in constraints.items()}
    assert all(str(c.specifier).startswith("==") for c in constraints.values())
    assert {
        name: (str(r.specifier), tested.get(name))
        for name, r in wanted.items()
        if tested.get(name) is None or not r.specifier.contains(tested[name])
    } == {}
