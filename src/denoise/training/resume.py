"""The resume state: everything needed to continue an interrupted run bit-identically.

Saved atomically (via :func:`denoise.checkpoint.save_checkpoint`) every ``checkpoint_every``
iterations to a path that is NOT a DVC output (DVC deletes declared outputs before a stage
runs). A state whose fingerprint differs from the current config, data or code is ignored.
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
from denoise.data.patch_store import RandomCropDataset
from denoise.errors import DenoiseError

PACKAGE = Path(__file__).resolve().parents[1]


def code_identity(package: Path = PACKAGE) -> str:
    """A hash of the ``denoise`` package's source.

    DVC re-runs a training stage when its code changes; an interrupted run's state must then
    not be carried on under the new code, or the model would be half one version's training
    and half the other's while ``dvc.lock`` records only the new code. The whole package is
    hashed, not just the modules training imports: an edit elsewhere merely costs a restart.
    """
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def data_identity(ds: RandomCropDataset) -> dict[str, Any]:
    """Shape and a digest of every patch, noisy and clean.

    Every byte, not a sample of patches: another ``crop_split`` (other held-out scenes) can
    leave the shape and any few patches as they were, and a resume state trained on what is
    now a test scene must not be reused. Hashing the default store takes well under a second.
    """
    digest = hashlib.blake2b(digest_size=16)
    for patches in (ds.noisy, ds.clean):
        for start in range(0, len(patches), 256):
            digest.update(np.ascontiguousarray(patches[start : start + 256]).data)
    return {"shape": list(ds.noisy.shape), "blake2b": digest.hexdigest()}


def fingerprint(config: dict[str, Any], data: dict[str, Any]) -> str:
    """A short hash of what determines the result: the config, the data's identity, the code."""
    blob = json.dumps(
        {"config": config, "data": data, "code": code_identity()}, sort_keys=True, default=str
    )
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
    loss_window: list[float],
    history: str | None,
) -> None:
    """``history``: :func:`~denoise.training.tracking.history_digest` of the DVCLive folder
    at ``iteration`` (None: no tracking)."""
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
        loss_window=list(loss_window),
        history=history,
    )


def load_resume(path: Path, fp: str, *, quiet: bool = False) -> dict[str, Any] | None:
    """The saved state if ``path`` holds one for this exact config and data, else ``None``;
    why not is printed unless ``quiet`` (every DDP rank loads it, one says so)."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except DenoiseError as e:
        if not quiet:
            print(f"warning: ignoring unreadable resume state ({e})")
        return None
    if state.get("meta", {}).get("fingerprint") != fp:
        if not quiet:
            print(f"note: {path} is from other params, data or code; starting from scratch")
        return None
    return state
