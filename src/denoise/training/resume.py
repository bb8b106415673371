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


def run_identity(config: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """What determines a run's result: the config, the data's identity (and how the run is
    split and placed: device, processes), the code's. Saved with a resume state, in JSON's
    types, so that a state from another run can say what differs."""
    identity = {"config": config, "data": data, "code": code_identity()}
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of a :func:`run_identity`."""
    blob = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def identity_difference(saved: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """What differs between two :func:`run_identity` values, in words, e.g. ``processes 2
    (this run: 1)`` or ``params lr 0.001 (this run: 0.0005)``."""
    if not isinstance(saved, dict):  # a state saved before identities were
        return "other params, data or code"

    def changed(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
        return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    said = []
    config, now = saved.get("config", {}), current["config"]
    if keys := changed(config, now):
        said.append(
            "params " + ", ".join(f"{k} {config.get(k)!r} (this run: {now.get(k)!r})" for k in keys)
        )
    data, now = saved.get("data", {}), current["data"]
    for key in changed(data, now):
        if isinstance(now.get(key), dict):  # a dataset's digest: its values say nothing
            said.append(f"other {key} data")
        else:
            said.append(f"{key} {data.get(key)!r} (this run: {now.get(key)!r})")
    if saved.get("code") != current["code"]:
        said.append("other code (src/denoise)")
    return "; ".join(said) or "other params, data or code"


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
    identity: dict[str, Any],
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
        meta={"iteration": iteration, "fingerprint": fingerprint(identity), "identity": identity},
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        rng=rng_state(),
        best=best,
        loss_window=list(loss_window),
        history=history,
    )


def load_resume(
    path: Path, identity: dict[str, Any], *, quiet: bool = False
) -> dict[str, Any] | None:
    """The saved state if ``path`` holds one of this :func:`run_identity`, else ``None``;
    why not is printed unless ``quiet`` (every DDP rank loads it, one says so)."""
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except DenoiseError as e:
        if not quiet:
            print(f"warning: ignoring unreadable resume state ({e})")
        return None
    meta = state.get("meta", {})
    if meta.get("fingerprint") != fingerprint(identity):
        if not quiet:
            why = identity_difference(meta.get("identity"), identity)
            print(f"note: {path} is from a run with {why}; starting from scratch")
        return None
    return state
