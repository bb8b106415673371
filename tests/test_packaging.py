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


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_modules() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "src" / "denoise").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"denoise", "__future__"}


def test_pyproject_declares_every_package_the_code_imports() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    distributions = importlib.metadata.packages_distributions()
    modules = _imported_modules()
    assert {"cv2", "PIL", "scipy", "tritonclient"} <= modules  # the walk sees lazy imports
    missing = {
        module: distributions.get(module)
        for module in modules - GPU_ONLY
        if not declared & {_name(d) for d in distributions.get(module, [])}
    }
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


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
