"""The training loop: one function for both networks, single process or ``torchrun`` DDP.

Iteration-based: each iteration draws a fresh global batch of random crops (with flips and
rotations) whose order is a pure function of the seed and the iteration, steps the optimiser
and the cosine schedule once, and every ``val_every`` iterations scores the centre crops of
the validation patches with the project's metrics. The BEST weights by validation PSNR are
written once, at the end, as ``{"params", "model", "config", "meta"}``; a resume state is
written every ``checkpoint_every`` iterations so an interrupted run continues where it
stopped and ends bit-identical (on CPU) to a run that was never interrupted.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from denoise.checkpoint import save_checkpoint
from denoise.data.patch_store import CropTooLarge, RandomCropDataset, evenly_spaced
from denoise.errors import DenoiseError
from denoise.models.registry import build_model
from denoise.training import distributed
from denoise.training.config import SHARED_KEYS, TrainConfig
from denoise.training.precision import amp_context, amp_precision, grad_scaler
from denoise.training.recipe import LOSSES, build_optimizer, build_scheduler, optimizer_step
from denoise.training.resume import (
    data_identity,
    load_resume,
    run_identity,
    save_resume,
    set_rng_state,
)
from denoise.training.sampling import EpochIndexed, IterationBatchSampler
from denoise.training.tracking import Tracker, history_digest
from denoise.training.validation import Validation, validate


@dataclass
class TrainResult:
    best_psnr: float
    best_ssim: float
    best_iteration: int
    input_psnr: float  # the noisy input's PSNR on the same validation crops
    iterations_per_s: float  # measured over this run's iterations (excluding validation)


@dataclass
class Best:
    """The best validation so far and a copy of the weights that scored it (none before the
    first validation). Saved with the resume state as a plain dict (:meth:`as_state`)."""

    psnr: float = -math.inf
    ssim: float = 0.0
    iteration: int = 0
    input_psnr: float = math.nan
    params: dict[str, torch.Tensor] | None = None

    def as_state(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def after(self, v: Validation, iteration: int, model: nn.Module) -> Best:
        """This, or ``v`` with ``model``'s weights where ``v`` scores higher."""
        if not v.psnr > self.psnr:
            return self
        params = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
        return Best(v.psnr, v.ssim, iteration, v.input_psnr, params)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def train_model(
    cfg: TrainConfig,
    train_dir: str | Path,
    val_dir: str | Path,
    out_path: str | Path,
    *,
    resume_path: str | Path | None = None,
    live_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` and write its best weights to ``out_path``.

    ``resume_path`` holds the periodic resume state (continued from when it matches the config
    and data; removed after a successful run). ``live_dir`` is the DVCLive folder (``None``:
    no tracking). Under torchrun only rank 0 validates and writes files. Raises
    :class:`DenoiseError` on a non-finite loss (and writes no model).
    """
    d = distributed.setup(cfg.device)
    try:
        return _train(
            cfg,
            Path(train_dir),
            Path(val_dir),
            Path(out_path),
            Path(resume_path) if resume_path else None,
            Path(live_dir) if live_dir else None,
            progress,
            d,
        )
    finally:
        distributed.teardown(d)


def _datasets(
    cfg: TrainConfig, train_dir: Path, val_dir: Path
) -> tuple[RandomCropDataset, RandomCropDataset]:
    datasets = []
    for key, folder, augment in (("crop", train_dir, True), ("val_crop", val_dir, False)):
        try:
            crop = getattr(cfg, key)
            datasets.append(RandomCropDataset(folder, crop, augment=augment, seed=cfg.seed))
        except CropTooLarge as e:  # the setting to change, beside the data it does not fit
            where = "train" if key in SHARED_KEYS else f"train.{cfg.model}"
            raise DenoiseError(f"params.yaml {where}.{key} {crop}: {e}") from None
    train_ds, val_ds = datasets
    for split, ds, where in (("train", train_ds, train_dir), ("val", val_ds, val_dir)):
        if len(ds) == 0:
            raise DenoiseError(f"{where}: the {split} split has no patches (see crop_split params)")
    return train_ds, val_ds


def _resume_state(
    resume_path: Path | None, identity: dict[str, Any], live_dir: Path | None, d: distributed.Dist
) -> dict[str, Any] | None:
    """The interrupted run's state to continue from: one of this run identity whose DVCLive
    history is still the one it logged (else every rank starts from scratch)."""
    state = load_resume(resume_path, identity, quiet=not d.main) if resume_path else None
    if state is None or live_dir is None:
        return state
    at = int(state["meta"]["iteration"])
    moved = d.main and history_digest(live_dir, at) != state.get("history")
    if distributed.any_rank(moved, d):  # every rank starts over, or none
        if d.main:
            print(
                f"note: {live_dir} no longer holds the interrupted run's history up to "
                f"iteration {at} (restored or removed?); starting from scratch"
            )
        return None
    return state


def _distributed(model: nn.Module, d: distributed.Dist) -> nn.Module:
    """``model`` as the training step runs it: itself, or wrapped for DDP."""
    if d.world == 1:
        return model
    net = model
    if d.device.type == "cuda":  # on CPU (gloo) BatchNorm statistics stay per rank:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBN needs CUDA
    return DistributedDataParallel(net, device_ids=[d.device] if d.device.type == "cuda" else None)


def _validation_point(
    cfg: TrainConfig,
    it: int,
    model: nn.Module,
    val_ds: RandomCropDataset,
    val_idx: list[int],
    amp: str,
    d: distributed.Dist,
) -> Validation | None:
    """Rank 0's validation (None on the others); every rank stops together on a NaN score:
    rank 0 alone raising would leave the rest waiting."""
    v = validate(model, val_ds, val_idx, d.device, cfg.val_batch, amp) if d.main else None
    if distributed.any_rank(v is not None and math.isnan(v.psnr), d):
        raise DenoiseError(
            f"train.{cfg.model}: validation PSNR is NaN at iteration {it} "
            "(the network outputs non-finite values); no model written"
        )
    return v


def _train(
    cfg: TrainConfig,
    train_dir: Path,
    val_dir: Path,
    out_path: Path,
    resume_path: Path | None,
    live_dir: Path | None,
    progress: bool,
    d: distributed.Dist,
) -> TrainResult:
    if cfg.batch_size % d.world:
        raise DenoiseError(
            f"train.{cfg.model}.batch_size {cfg.batch_size} is not divisible "
            f"by the {d.world} processes"
        )
    _seed_everything(cfg.seed)
    train_ds, val_ds = _datasets(cfg, train_dir, val_dir)
    val_idx = evenly_spaced(len(val_ds), cfg.val_patches)
    amp = amp_precision(d.device, cfg.amp)
    # The resolved device is part of the identity: a CPU state has no GPU run's AMP scaler.
    identity = run_identity(
        cfg.fingerprint_fields(),
        {
            "train": data_identity(train_ds),
            "val": data_identity(val_ds),
            "device": d.device.type,
            "fp16": amp == "fp16",
            # each process's share of the batch, and DnCNN's BatchNorm statistics per process
            "processes": d.world,
        },
    )

    model = build_model(cfg.model, cfg.arch).to(d.device)  # checked with the params
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = grad_scaler(amp)
    loss_fn = LOSSES[cfg.loss]

    start, best = 0, Best()
    # The losses since the last logged point: saved with the resume state, so a resume between
    # two points logs the same mean an uninterrupted run would.
    window: list[float] = []
    state = _resume_state(resume_path, identity, live_dir, d)
    if state is not None:
        model.load_state_dict(state["params"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best = int(state["meta"]["iteration"]), Best(**state["best"])
        window = list(state["loss_window"])
        if d.main:
            print(f"resuming {cfg.model} from iteration {start} ({resume_path})")

    net = _distributed(model, d)
    net.train()
    loader = DataLoader(
        EpochIndexed(train_ds),
        batch_sampler=IterationBatchSampler(
            len(train_ds), cfg.batch_size, cfg.seed, start=start, rank=d.rank, world=d.world
        ),
        num_workers=cfg.num_workers,
        pin_memory=d.device.type == "cuda",
    )
    tracker = Tracker(
        live_dir if d.main else None,
        {"model": cfg.model, **cfg.fingerprint_fields(), "world": d.world},
        start,
    )
    bar = tqdm(
        total=cfg.iters,
        initial=start,
        desc=f"train {cfg.model}",
        unit="it",
        disable=not (progress and d.main),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    step_time, steps = 0.0, 0
    batches = iter(loader)
    try:  # the bar closed first, so an error is not printed into it
        for it in range(start + 1, cfg.iters + 1):
            t0 = time.perf_counter()
            noisy, clean = next(batches)
            noisy = noisy.to(d.device, non_blocking=True)
            clean = clean.to(d.device, non_blocking=True)
            with amp_context(amp):
                out = net(noisy)
            loss = loss_fn(out.float(), clean)
            loss_value = float(distributed.all_mean(loss.detach(), d))
            if not math.isfinite(loss_value):
                raise DenoiseError(
                    f"train {cfg.model}: non-finite loss ({loss_value}) at "
                    f"iteration {it}; no model written (lower train.{cfg.model}.lr?)"
                )
            lr = optimizer.param_groups[0]["lr"]  # this iteration's, before the schedule moves on
            optimizer_step(loss, net, optimizer, scaler, cfg.grad_clip)
            scheduler.step()
            step_time += time.perf_counter() - t0
            steps += 1
            window.append(loss_value)

            logged: dict[str, float] = {}
            image = None
            if it % cfg.log_every == 0 or it == cfg.iters:
                logged = {"train/loss": float(np.mean(window)), "train/lr": lr}
                window.clear()
            if it % cfg.val_every == 0 or it == cfg.iters:
                v = _validation_point(cfg, it, model, val_ds, val_idx, amp, d)
                if v is not None:
                    logged.update({"val/psnr": v.psnr, "val/ssim": v.ssim})
                    image = v.strip
                    best = best.after(v, it, model)
            if logged:
                tracker.log(it, logged, image, f"val/{it:07d}.png")
                shown = {"val_psnr": f"{best.psnr:.2f}"} if best.params is not None else {}
                bar.set_postfix(loss=f"{loss_value:.4g}", **shown)
            bar.update(1)
            if it % cfg.checkpoint_every == 0 and it < cfg.iters and d.main and resume_path:
                save_resume(
                    resume_path,
                    cfg.model,
                    cfg.arch,
                    identity=identity,
                    iteration=it,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    best=best.as_state(),
                    loss_window=window,
                    history=history_digest(live_dir, it) if live_dir else None,
                )
    finally:
        bar.close()
    del batches  # stops the loader's workers

    if d.main:
        _write_results(cfg, best, out_path, tracker, d.world)
        if resume_path:
            resume_path.unlink(missing_ok=True)
    distributed.barrier(d)
    return TrainResult(
        best.psnr,
        best.ssim,
        best.iteration,
        best.input_psnr,
        steps / step_time if step_time else math.nan,
    )


def _write_results(
    cfg: TrainConfig, best: Best, out_path: Path, tracker: Tracker, world: int
) -> None:
    """The best weights as the model checkpoint, and the best scores as DVCLive's summary."""
    meta = {
        "iteration": best.iteration,
        "val_psnr": best.psnr,
        "val_ssim": best.ssim,
        "val_psnr_input": best.input_psnr,
        "iters": cfg.iters,
        "seed": cfg.seed,
        "crop": cfg.crop,
        "batch_size": cfg.batch_size,
        "world_size": world,
    }
    save_checkpoint(out_path, cfg.model, cfg.arch, best.params, meta=meta)
    tracker.summary(
        {
            "best/val_psnr": best.psnr,
            "best/val_ssim": best.ssim,
            "best/iteration": best.iteration,
            "val/psnr_input": best.input_psnr,
        }
    )
    tracker.end()
