"""ONNX export of a checkpoint, with the checks that make the file safe to deploy.

A trained network becomes ``model.onnx`` with a dynamic batch, height and width (opset >= 17,
the legacy TorchScript exporter: it needs only ``onnx``). Before anything reaches the Triton
model repository the file must pass ``onnx.checker``, keep NAFNet's LayerNorm as native
``LayerNormalization`` nodes (TensorRT keeps those in FP32; an FP16 LayerNorm gives NaN), and
match PyTorch within a tolerance on several sizes, including ones that are not multiples of 16
(NAFNet pads internally, so a shape baked in at trace time shows up only there).
"""

from __future__ import annotations

import collections
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from denoise.checkpoint import load_model
from denoise.errors import DenoiseError, first_line
from denoise.fileio import atomic_path, write_errors_named, write_json
from denoise.infer import OnnxRuntimeBackend
from denoise.padding import PAD_MULTIPLE_KEY, pad_multiple_of
from denoise.params import SEED_RULE, checked_section, valid_seed
from denoise.triton.repository import (
    INPUT_NAME,
    NETWORK_KEY,
    ONNX_FILE,
    OUTPUT_NAME,
    file_md5,
    remove_engine_unless_built_from,
    write_onnx_routes,
)

MIN_OPSET = 17
MAX_OPSET = 20  # the newest the legacy (TorchScript) exporter writes, in torch 2.13
# Models whose graph must contain native LayerNormalization nodes after export.
NEEDS_LAYERNORM = {"nafnet"}


@dataclass(frozen=True)
class ExportSettings:
    """The ``export`` section of params.yaml."""

    opset: int
    tolerance: float
    parity_sizes: tuple[tuple[int, int], ...]
    parity_batch: int
    seed: int
    max_batch_size: int
    python_threads: int

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> ExportSettings:
        s = checked_section(cls, section, "export")
        settings = cls(**s)
        problems = [
            msg
            for ok, msg in (
                (
                    MIN_OPSET <= settings.opset <= MAX_OPSET,
                    f"opset must be {MIN_OPSET}-{MAX_OPSET} (LayerNormalization needs "
                    f"{MIN_OPSET}; torch's exporter writes up to {MAX_OPSET})",
                ),
                (
                    bool(settings.parity_sizes)
                    and all(len(hw) == 2 and min(hw) >= 1 for hw in settings.parity_sizes),
                    "parity_sizes must be one or more [height, width] pairs of sides >= 1",
                ),
                (
                    min(settings.parity_batch, settings.max_batch_size) >= 1,
                    "parity_batch and max_batch_size must be >= 1",
                ),
                (
                    settings.tolerance >= 0 and settings.python_threads >= 0,
                    "tolerance and python_threads must be >= 0",
                ),
                (valid_seed(settings.seed), f"seed {SEED_RULE}"),
            )
            if not ok
        ]
        if problems:
            raise DenoiseError(f"params.yaml export: {'; '.join(problems)}")
        return settings


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = 17,
    sample_hw: tuple[int, int] = (64, 64),
    network: str | None = None,
) -> None:
    """Export ``model`` to ``path`` with dynamic batch/height/width axes, atomically; its
    padding multiple and ``network`` (the registry name, if given) go in the metadata."""
    if opset < MIN_OPSET:
        raise DenoiseError(
            f"export opset {opset} < {MIN_OPSET}: LayerNorm would not be a "
            "native LayerNormalization node"
        )
    model = model.eval().float().cpu()
    sample = torch.rand(1, 3, *sample_hw)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(
            model,
            (sample,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            do_constant_folding=True,
        )
        props = {} if network is None else {NETWORK_KEY: network}
        multiple = pad_multiple_of(model)
        if multiple > 1:  # so that the onnxruntime backend pads tiles as the torch one does
            props[PAD_MULTIPLE_KEY] = str(multiple)
        if props:
            proto = onnx.load(str(tmp))
            onnx.helper.set_model_props(proto, props)
            onnx.save(proto, str(tmp))


def check_onnx(path: str | Path, *, require_layernorm: bool) -> dict[str, int]:
    """Run ``onnx.checker`` and return the graph's op-type counts.

    Raises DenoiseError when the checker rejects the file, or when ``require_layernorm`` and
    the graph has no LayerNormalization node (LayerNorm decomposed into primitive ops).
    """
    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError and friends
        raise DenoiseError(f"{path}: onnx.checker failed: {first_line(e)}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    if require_layernorm and ops["LayerNormalization"] == 0:
        raise DenoiseError(
            f"{path}: no LayerNormalization node in the graph (LayerNorm was "
            "decomposed; TensorRT FP16 would overflow it)"
        )
    return dict(sorted(ops.items()))


def parity(
    model: nn.Module,
    onnx_path: str | Path,
    sizes: Sequence[tuple[int, int]],
    *,
    batch: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Max absolute difference of ONNX vs PyTorch outputs, per ``HxW`` size, on random inputs."""
    session = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    diffs: dict[str, float] = {}
    model = model.eval().float().cpu()
    for h, w in sizes:
        x = rng.random((batch, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = session(x)
        if out.shape != ref.shape:
            raise DenoiseError(
                f"{onnx_path}: output shape {out.shape} for input {x.shape}, "
                f"PyTorch gives {ref.shape}"
            )
        diffs[f"{h}x{w}"] = float(np.max(np.abs(out - ref)))
    return diffs


def exported_checkpoint_name(metrics_path: str | Path) -> str | None:
    """The checkpoint, as :func:`export_checkpoint`'s report names it, of the export the
    report at ``metrics_path`` records if that export passed; None for a failed export (the
    repository still holds the one before) or a report missing or unreadable."""
    try:
        report = json.loads(Path(metrics_path).read_text())
        name = report["checkpoint"] if report.get("passed") is True else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def export_checkpoint(
    checkpoint: str | Path,
    repository: str | Path,
    metrics_path: str | Path,
    settings: ExportSettings,
) -> dict[str, Any]:
    """Export ``checkpoint`` to ONNX, verify it, then write the Triton repository entries.

    Verification happens on a temporary file: when the checker, the LayerNorm check or the
    parity (max abs diff above ``settings.tolerance``) fails, a DenoiseError is raised and
    the repository is left untouched (a parity failure still writes the metrics file, with
    ``passed: false``, for diagnosis; :func:`exported_checkpoint_name` reads it). A
    TensorRT engine built from another ONNX than the one written is removed (build-trt
    builds it anew); one built from the same bytes (a re-run that changed only the checks)
    stays.
    """
    model, ckpt = load_model(checkpoint)
    name = str(ckpt["model"])
    with tempfile.TemporaryDirectory(prefix="denoise-export-") as tmp:
        onnx_path = Path(tmp) / ONNX_FILE
        export_onnx(model, onnx_path, opset=settings.opset, network=name)
        ops = check_onnx(onnx_path, require_layernorm=name in NEEDS_LAYERNORM)
        diffs = parity(
            model, onnx_path, settings.parity_sizes, batch=settings.parity_batch, seed=settings.seed
        )
        worst = float(np.max(list(diffs.values())))  # NaN-propagating, unlike max()
        report = {
            "model": name,
            "checkpoint": str(checkpoint),
            "opset": settings.opset,
            "max_abs_diff": worst,
            "max_abs_diff_per_size": diffs,
            "tolerance": settings.tolerance,
            "passed": worst <= settings.tolerance,
            "layernorm_nodes": ops.get("LayerNormalization", 0),
            "nodes": sum(ops.values()),
            "onnx_bytes": onnx_path.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if not worst <= settings.tolerance:  # also catches NaN
            write_json(metrics_path, report)  # for diagnosis
            raise DenoiseError(
                f"{checkpoint}: ONNX differs from PyTorch by {worst:.3g} "
                f"(> export.tolerance {settings.tolerance:g}); nothing written to "
                f"{repository}"
            )
        # The engine of the old ONNX goes first, the routes are swapped in together, and the
        # report comes last: a write cut short (a full disk, Ctrl-C) leaves no model serving
        # the old network beside one serving the new, nor a report of an unfinished export.
        remove_engine_unless_built_from(repository, file_md5(onnx_path))
        with write_errors_named(repository):
            write_onnx_routes(
                repository,
                onnx_path,
                max_batch_size=settings.max_batch_size,
                python_threads=settings.python_threads,
            )
        write_json(metrics_path, report)
    return report
