"""The Triton model repository: the models' names and configs, and writing them."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from denoise.errors import DenoiseError
from denoise.fileio import atomic_path, flush_to_disk
from denoise.padding import PAD_MULTIPLE_KEY, pad_multiple_value

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"
ONNX_MODEL = "denoise_onnx"
PYTHON_MODEL = "denoise_python"
TRT_MODEL = "denoise_trt"
# The Triton models the export stage writes from one ONNX file (route -> model name).
ONNX_ROUTES = {"onnx": ONNX_MODEL, "python": PYTHON_MODEL}
# A model's files: <repository>/<model>/VERSION/{ONNX_FILE | PLAN_FILE}. python_model.py,
# which runs in Triton's python stub without this package, spells the first and
# THREADS_KEY out (tests/test_triton.py checks that the two agree).
VERSION = "1"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
# the python route's onnxruntime threads (0: one per physical core)
THREADS_KEY = "intra_op_threads"
PYTHON_MODEL_TEMPLATE = Path(__file__).with_name("python_model.py")
# The TensorRT engine's config parameters: the MD5 of the ONNX file it was built from, and of
# the settings it was built with (precision, optimisation profile, workspace).
SOURCE_ONNX_KEY = "source_onnx_md5"
BUILD_SETTINGS_KEY = "build_settings_md5"
# The network the weights are (a models.registry name): the export records it in the ONNX
# file's metadata and every model served from that file carries it in its config, so a client
# that asks for ``dncnn`` is refused by a server holding a NAFNet instead of answered by it.
NETWORK_KEY = "network"


def model_config(
    name: str,
    *,
    max_batch_size: int,
    platform: str | None = None,
    backend: str | None = None,
    instance_kind: str | None = None,
    parameters: dict[str, str] | None = None,
) -> str:
    """The ``config.pbtxt`` text of one denoiser model (exactly one of platform/backend)."""
    if (platform is None) == (backend is None):
        raise ValueError("give exactly one of platform and backend")
    if max_batch_size < 1:
        raise DenoiseError(
            f"{name}: max_batch_size must be > 0 (got {max_batch_size}); "
            "dims [3, -1, -1] rely on the batch dimension"
        )
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"' if platform else f'backend: "{backend}"',
        f"max_batch_size: {max_batch_size}",
    ]
    for kind, tname in (("input", INPUT_NAME), ("output", OUTPUT_NAME)):
        lines += [
            f"{kind} [",
            "  {",
            f'    name: "{tname}"',
            "    data_type: TYPE_FP32",
            "    dims: [ 3, -1, -1 ]",
            "  }",
            "]",
        ]
    # Requests waiting while the model is busy run as one batch (each request's batch dim
    # adds up to max_batch_size); Triton groups only requests of one shape.
    lines.append("dynamic_batching { }")
    if instance_kind:
        lines += [
            "instance_group [",
            "  {",
            "    count: 1",
            f"    kind: {instance_kind}",
            "  }",
            "]",
        ]
    for key, value in (parameters or {}).items():
        lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]
    return "\n".join(lines) + "\n"


def config_parameter(config: str, key: str) -> str | None:
    """The value of a ``parameters`` entry in config.pbtxt text written by
    :func:`model_config` (None: no such entry)."""
    entry = rf'parameters \{{\s*key: "{re.escape(key)}"\s*value: \{{ string_value: "([^"]*)" \}}'
    match = re.search(entry, config)
    return match.group(1) if match else None


def onnx_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (the export writes the padding multiple and the
    network there)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def served_parameters(onnx_path: str | Path) -> dict[str, str]:
    """The config parameters of every model served from ``onnx_path``: its padding multiple
    and, where the export recorded it, its network."""
    meta = onnx_metadata(onnx_path)  # one read of the file for both
    params = {PAD_MULTIPLE_KEY: str(pad_multiple_value(meta.get(PAD_MULTIPLE_KEY), str(onnx_path)))}
    network = meta.get(NETWORK_KEY)
    return params if network is None else {**params, NETWORK_KEY: network}


# A served model as written: its name, its config.pbtxt text, and the files of its version 1.
ModelFiles = tuple[str, str, dict[str, str | Path]]


def write_models(repository: str | Path, models: Sequence[ModelFiles]) -> list[Path]:
    """Write ``<repository>/<name>/`` (config.pbtxt + ``1/<file>`` for each file) for each
    model. All are staged first and swapped in together at the end: a write cut short (a full
    disk, Ctrl-C) leaves every old model in place, never some models new and others old."""
    with contextlib.ExitStack() as swaps:  # each swap runs at the exit, after every write
        staged = []
        for name, config, files in models:
            staged.append(swaps.enter_context(atomic_path(Path(repository) / name)))
            (staged[-1] / VERSION).mkdir(parents=True)
            (staged[-1] / "config.pbtxt").write_text(config)
            for dst, src in files.items():
                shutil.copyfile(src, staged[-1] / VERSION / dst)
        for folder in staged:  # on disk before the first swap: then only renames remain
            flush_to_disk(folder)
    return [Path(repository) / name for name, _, _ in models]


def write_model(
    repository: str | Path, name: str, config: str, files: dict[str, str | Path]
) -> Path:
    """Write one model's folder (see :func:`write_models`)."""
    return write_models(repository, [(name, config, files)])[0]


def onnx_route(
    route: str,
    onnx_path: str | Path,
    served: dict[str, str],
    *,
    max_batch_size: int,
    python_threads: int = 0,
) -> ModelFiles:
    """The repository entry of one ONNX route, ``onnx`` or ``python``; ``served``: the
    :func:`served_parameters` of ``onnx_path``."""
    if route == "onnx":
        config = model_config(
            ONNX_MODEL,
            platform="onnxruntime_onnx",
            max_batch_size=max_batch_size,
            parameters=served,
        )
        return ONNX_MODEL, config, {ONNX_FILE: onnx_path}
    if route == "python":
        config = model_config(
            PYTHON_MODEL,
            backend="python",
            max_batch_size=max_batch_size,
            instance_kind="KIND_CPU",
            parameters={THREADS_KEY: str(python_threads), **served},
        )
        return PYTHON_MODEL, config, {ONNX_FILE: onnx_path, "model.py": PYTHON_MODEL_TEMPLATE}
    raise DenoiseError(f"unknown export route {route!r}; known: {sorted(ONNX_ROUTES)}")


def write_onnx_routes(
    repository: str | Path, onnx_path: str | Path, *, max_batch_size: int, python_threads: int = 0
) -> list[Path]:
    """Write every ONNX route's repository entry from one ONNX file, swapped in together."""
    served = served_parameters(onnx_path)
    models = [
        onnx_route(
            r, onnx_path, served, max_batch_size=max_batch_size, python_threads=python_threads
        )
        for r in ONNX_ROUTES
    ]
    return write_models(repository, models)


def reference_onnx(repository: str | Path) -> Path:
    """The exported ONNX in the repository (both ONNX routes hold the same file)."""
    for name in (ONNX_MODEL, PYTHON_MODEL):
        path = Path(repository) / name / VERSION / ONNX_FILE
        if path.is_file():
            return path
    raise DenoiseError(
        f"{repository}: no {ONNX_MODEL}/{VERSION}/{ONNX_FILE} or {PYTHON_MODEL}/{VERSION}/"
        f"{ONNX_FILE} (run the export-onnx stage first)"
    )


def file_md5(path: str | Path) -> str:
    """The MD5 of a file's bytes (an ONNX file: what a TensorRT engine was built from)."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def remove_engine_unless_built_from(
    repository: str | Path, onnx_md5: str, settings_md5: str | None = None
) -> bool:
    """Remove the TensorRT engine unless its config says it was built from the ONNX file
    whose MD5 is ``onnx_md5`` (and, if given, with the settings whose MD5 is
    ``settings_md5``); True if it was removed. Served beside a new ONNX, an engine of the old
    one would answer with the old network."""
    engine = Path(repository) / TRT_MODEL
    if not engine.is_dir():
        return False
    expected = {SOURCE_ONNX_KEY: onnx_md5}
    if settings_md5 is not None:
        expected[BUILD_SETTINGS_KEY] = settings_md5
    try:
        config = (engine / "config.pbtxt").read_text()
        built = {key: config_parameter(config, key) for key in expected}
    except OSError:
        built = {}
    if built == expected:
        return False
    shutil.rmtree(engine)
    return True


def exported_model(backend: str, repository: str | Path) -> Path:
    """The file the pipeline last exported for a local ``backend`` (onnxruntime, tensorrt)."""
    if backend == "onnxruntime":
        return reference_onnx(repository)
    plan = Path(repository) / TRT_MODEL / VERSION / PLAN_FILE
    if backend != "tensorrt":
        raise DenoiseError(f"backend {backend!r} has no exported model file; pass --model")
    if not plan.is_file():
        raise DenoiseError(f"{plan}: not found (the build-trt stage writes it on a TensorRT GPU)")
    return plan
