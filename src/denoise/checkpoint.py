"""The checkpoint format: weights plus everything needed to rebuild the network.

``{"params": state_dict, "model": name, "config": constructor kwargs, "meta": {...}}``.
Weights sit under ``params`` as in the official NAFNet release, so those files load too
(pass the model name and config when the file carries none). Files are always read with
``torch.load(weights_only=True)``: a checkpoint is data, never code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoise.errors import DenoiseError
from denoise.fileio import write_bytes_atomic
from denoise.models.registry import build_model
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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DenoiseError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise DenoiseError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e})".splitlines()[0]
        ) from None
    if not isinstance(ckpt, dict) or "params" not in ckpt:
        raise DenoiseError(f"{path}: not a denoise/NAFNet checkpoint (no 'params' key)")
    return ckpt


def load_model(
    path: str | Path, model_name: str | None = None, config: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in ``path`` in eval mode; returns ``(model, checkpoint)``."""
    ckpt = read_checkpoint(path)
    name = model_name or ckpt.get("model")
    cfg = config if config is not None else ckpt.get("config")
    if name is None or cfg is None:
        raise DenoiseError(f"{path}: checkpoint has no model name/config; pass them explicitly")
    model = build_model(name, cfg)
    try:
        model.load_state_dict(ckpt["params"])
    except RuntimeError as e:
        raise DenoiseError(
            f"{path}: weights do not match {name} {cfg}: {str(e).splitlines()[0]}"
        ) from None
    return model.eval(), ckpt
