"""The resume state: everything needed to continue an interrupted run bit-identically.

Saved atomically (via :func:`denoise.checkpoint.save_checkpoint`) every ``checkpoint_every``
iterations to a path that is NOT a DVC output (DVC deletes declared outputs before a stage
runs). A state whose fingerprint differs from the current config and data is ignored.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoise.checkpoint import read_checkpoint, save_checkpoint
from denoise.errors import DenoiseError


def fingerprint(config: dict[str, Any], data: dict[str, Any]) -> str:
    """A short hash of what determines the result: the config and the data's identity."""
    blob = json.dumps({"config": config, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_resume(
    path: Path,
    model_name: str,
    arch: dict[str, Any],
    *,
    fp: str,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    best: dict[str, Any],
) -> None:
    save_checkpoint(
        path,
        model_name,
        arch,
        model.state_dict(),
        meta={"iteration": iteration, "fingerprint": fp},
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        rng=rng_state(),
        best=best,
    )


def load_resume(path: Path, fp: str) -> dict[str, Any] | None:
    """The saved state if ``path`` holds one for this exact config and data, else ``None``."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except DenoiseError as e:
        print(f"warning: ignoring unreadable resume state ({e})")
        return None
    if state.get("meta", {}).get("fingerprint") != fp:
        print(f"note: {path} is from other params or data; starting from scratch")
        return None
    return state
