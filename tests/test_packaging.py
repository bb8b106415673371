"""pyproject.toml declares what the code imports, and requirements.txt pins all of it."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

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


def _imported_modules(top_level_only: bool = False) -> set[str]:
    """Third-party modules imported anywhere in the package, or only at its modules' top
    level (run when the module is imported, not when a function is called)."""
    found: set[str] = set()
    for path in (REPO / "src" / "denoise").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.iter_child_nodes(tree) if top_level_only else ast.walk(tree)
        for node in nodes:
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
    assert not PIPELINE_ONLY & _imported_modules(top_level_only=True)


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


def _pins(*files: str) -> dict[str, str]:
    pins = {}
    for file in files:
        for line in (REPO / file).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                name, version = line.split("==")
                pins[_name(name)] = version.strip()
    return pins


def test_constraints_hold_every_pin_and_leave_torch_to_requirements() -> None:
    """constraints.txt (the tested environment, transitive packages too) agrees with every
    exact pin; torch stays out (its CPU and CUDA builds differ in their local version)."""
    constraints = _pins("constraints.txt")
    pins = _pins("requirements.txt", "requirements-dev.txt")
    assert "torch" not in constraints and pins.pop("torch") == "2.13.0"
    assert len(constraints) > 2 * len(pins)  # the transitive ones, not only the direct ones
    assert {name: v for name, v in pins.items() if constraints.get(name) != v} == {}
