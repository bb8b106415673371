"""The checkpoint format: weights plus everything needed to rebuild the network.

``{"params": state_dict, "model": name, "config": constructor kwargs, "meta": {...}}``.
Weights sit under ``params`` as in the official NAFNet release, so those files load too, as
do bare state_dicts (KAIR's DnCNN releases); a file without a name and config gets them from
its weights' layout (:func:`denoise.models.registry.infer_architecture`). Files are always
read with ``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoise.errors import DenoiseError, first_line
from denoise.fileio import write_bytes_atomic
from denoise.models.registry import build_model, check_rgb, infer_architecture
from denoise.paths import MODELS_DIR


def checkpoint_path(name: str, models_dir: str | Path = MODELS_DIR) -> Path:
    """Where the training stage writes model ``name``: ``models/<name>.pt``."""
    return Path(models_dir) / f"{name}.pt"


def save_checkpoint(
    path: str | Path,
    model_name: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Write a checkpoint atomically. ``extra`` holds e.g. optimizer state for resuming."""
    buf = io.BytesIO()
    torch.save(
        {
            "params": {k: v.detach().cpu() for k, v in state_dict.items()},
            "model": model_name,
            "config": config,
            "meta": meta or {},
            **extra,
        },
        buf,
    )
    write_bytes_atomic(path, buf.getvalue())


DDP_PREFIX = "module."


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DenoiseError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False: unsafe
        raise DenoiseError(
            f"{path}: not a checkpoint that loads safely (corrupt, or it holds objects other "
            "than tensors and plain values)"
        ) from None
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        detail = f"{type(e).__name__}: {first_line(e)}"
        raise DenoiseError(
            f"{path}: not a readable checkpoint (cut short, corrupt or not a PyTorch file; "
            f"{detail if len(detail) <= 80 else detail[:77] + '...'})"
        ) from None
    if _is_state_dict(ckpt):
        ckpt = {"params": ckpt}  # weights only, as KAIR releases its models
    if isinstance(ckpt, dict) and "params" not in ckpt and _is_state_dict(ckpt.get("params_ema")):
        ckpt = {**ckpt, "params": ckpt["params_ema"]}  # BasicSR files with only EMA weights
    if not isinstance(ckpt, dict) or not _is_state_dict(ckpt.get("params")):
        raise DenoiseError(
            f"{path}: not a model checkpoint "
            "(no weights under 'params' or 'params_ema', and not a state_dict)"
        )
    params = ckpt["params"]
    if all(k.startswith(DDP_PREFIX) for k in params):  # saved from a DDP/DataParallel wrapper
        ckpt = {**ckpt, "params": {k[len(DDP_PREFIX) :]: v for k, v in params.items()}}
    return ckpt


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_model(
    path: str | Path, model_name: str | None = None, config: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in ``path`` in eval mode; returns ``(model, checkpoint)``.

    A file without a model name or config (an official NAFNet or KAIR DnCNN release) gets
    them from its weights' layout; the returned checkpoint then carries the inferred ones.
    """
    ckpt = read_checkpoint(path)
    name = model_name or ckpt.get("model")
    cfg = config if config is not None else ckpt.get("config")
    if name is None or cfg is None:
        try:
            inferred_name, inferred_cfg = infer_architecture(ckpt["params"], name)
        except DenoiseError as e:
            stored = "model config" if name is not None else "model name/config"
            raise DenoiseError(f"{path}: no {stored} stored, and {e}") from None
        name = name or inferred_name
        cfg = cfg if cfg is not None else inferred_cfg
        ckpt = {**ckpt, "model": name, "config": cfg}
    try:
        model = build_model(name, cfg)
    except DenoiseError as e:
        raise DenoiseError(f"{path}: {e}") from None
    mismatch = _mismatch(model.state_dict(), ckpt["params"])
    if mismatch:
        raise DenoiseError(f"{path}: weights do not match {name} {cfg}: {mismatch}")
    try:
        check_rgb(model, name)
    except DenoiseError as e:
        raise DenoiseError(f"{path}: {e}") from None
    model.load_state_dict(ckpt["params"])
    return model.eval(), ckpt


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """What keeps ``found`` from loading into a model with ``expected`` ('' when nothing)."""

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    # Files older than BatchNorm's counter lack num_batches_tracked; load_state_dict adds it.
    missing = [k for k in expected if k not in found and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        f"{k} {tuple(found[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    return "; ".join(
        f"{what} {some(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped))
        if keys
    )
