"""Which model the ``denoise`` command runs when the user does not say.

Explicit ``--model``/``--backend`` win. Otherwise the model the pipeline last exported: for
torch its checkpoint (``metrics/export.json`` names it), for onnxruntime and tensorrt the file
in the model repository, for triton the server's default model. Before any export, the torch
backend takes params.yaml's ``model`` switch: ``models/<model>.pt``.

Photos seldom sit in the project folder, so the project is looked for
(:func:`find_project`): the working folder or the nearest folder above it that holds the
pipeline (``dvc.yaml``), else ``$DENOISE_PROJECT``, else the checkout this package runs from.
"""

from __future__ import annotations

import os
from pathlib import Path

from denoise.checkpoint import checkpoint_path
from denoise.errors import DenoiseError
from denoise.infer import backend_for_file, check_backend_name
from denoise.params import load_params
from denoise.paths import EXPORT_METRICS, MODELS_DIR, PARAMS_FILE, PIPELINE_FILE, REPOSITORY


def find_project(start: Path | None = None) -> Path:
    """The project folder for the default model (see the module doc); ``start`` (default: the
    working folder) itself when none is found, so messages name the files looked for there."""
    start = Path.cwd() if start is None else start
    candidates = [start, *start.parents]
    if os.environ.get("DENOISE_PROJECT"):
        candidates.append(Path(os.environ["DENOISE_PROJECT"]))
    candidates.append(Path(__file__).resolve().parents[2])  # src/denoise/ in a checkout
    return next((c for c in candidates if (c / PIPELINE_FILE).is_file()), start)


def selected_model_name(params_path: str | Path = PARAMS_FILE) -> str | None:
    """The top-level ``model`` switch of params.yaml, or None without one."""
    if not Path(params_path).is_file():
        return None
    name = load_params(params_path).get("model")
    return str(name) if name else None


def exported_checkpoint(project: Path) -> Path | None:
    """The checkpoint the export-onnx stage last exported (its report names it relative to
    ``project``), if the report says it passed (a failed export leaves the earlier model in
    the repository) and the file exists; an unreadable report counts as none: params.yaml's
    switch decides then."""
    from denoise.export import exported_checkpoint_name  # onnx: only when it is needed

    name = exported_checkpoint_name(project / EXPORT_METRICS)
    path = project / name if name is not None else None
    return path if path is not None and path.is_file() else None


def resolve_model(
    model: str | None, backend: str | None, *, project: Path | None = None
) -> tuple[str, str]:
    """``(backend, model)`` for the command line: explicit values win; otherwise the model file
    decides the backend, and the model is the last export's in ``project`` (default:
    :func:`find_project`; see the module doc)."""
    if backend is not None:
        check_backend_name(backend)
    if model is None:
        if backend == "triton":
            # The served model, whichever network the server's repository was exported with:
            # params.yaml may name another since (not asked by name, so not checked).
            return backend, ""
        project = find_project() if project is None else project
        params_path = project / PARAMS_FILE
        name = selected_model_name(params_path)
        if backend in ("onnxruntime", "tensorrt"):
            from denoise.triton.repository import exported_model

            return backend, str(exported_model(backend, project / REPOSITORY))
        exported = exported_checkpoint(project)
        if exported is not None and backend in (None, "torch"):
            return "torch", str(exported)
        if name is None:
            where = (
                f"no `model:` in {params_path}"
                if params_path.is_file()
                else f"no {PARAMS_FILE} here or in a folder above (nor in $DENOISE_PROJECT)"
            )
            raise DenoiseError(
                f"no model given and {where}: pass --model PATH (a .pt checkpoint or .onnx "
                "file), or train one with `dvc repro` in the project folder"
            )
        if backend not in (None, "torch"):
            raise DenoiseError(f"backend {backend!r} needs --model (the file to run)")
        ckpt = checkpoint_path(name, project / MODELS_DIR)
        if not ckpt.is_file():
            raise DenoiseError(
                f"{ckpt}: not found ({params_path} selects model: {name}); "
                f"train it with `dvc repro train-{name}`, or pass --model PATH"
            )
        return "torch", str(ckpt)
    return backend or backend_for_file(model), model
