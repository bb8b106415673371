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

import contextlib
import hashlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from denoise.checkpoint import save_checkpoint
from denoise.data.patch_store import RandomCropDataset
from denoise.errors import DenoiseError
from denoise.metrics import psnr_batch, ssim, to_uint8
from denoise.models.registry import build_model, check_rgb
from denoise.training import distributed
from denoise.training.config import TrainConfig
from denoise.training.recipe import LOSSES, build_optimizer, build_scheduler
from denoise.training.resume import fingerprint, load_resume, save_resume, set_rng_state
from denoise.training.sampling import EpochIndexed, IterationBatchSampler
from denoise.training.tracking import Tracker, history_digest


@dataclass
class TrainResult:
    best_psnr: float
    best_ssim: float
    best_iteration: int
    input_psnr: float  # the noisy input's PSNR on the same validation crops
    iterations_per_s: float  # measured over this run's iterations (excluding validation)


@dataclass
class Validation:
    psnr: float
    ssim: float
    input_psnr: float
    strip: np.ndarray  # noisy | denoised | clean of the first validation patch, HWC uint8


def amp_precision(device: torch.device, enabled: bool) -> str:
    """The mixed precision a training step runs in: ``bf16`` on a GPU that has it, else
    ``fp16`` (which needs a GradScaler); ``off`` on CPU or when ``enabled`` is false."""
    if not enabled or device.type != "cuda":
        return "off"
    # Native bf16 only: the default also counts GPUs that merely emulate it (V100, T4).
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def amp_context(precision: str) -> contextlib.AbstractContextManager:
    """CUDA autocast in ``precision`` (from :func:`amp_precision`); nothing for ``off``."""
    if precision == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str) -> torch.amp.GradScaler:
    """The loss scaler for ``precision``: active for ``fp16`` only (bf16 has FP32's range)."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")


def optimizer_step(
    loss: torch.Tensor,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> None:
    """Backward and one optimiser step; with fp16 AMP the loss is scaled and the gradients are
    unscaled before clipping (a disabled scaler passes everything through)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


@torch.no_grad()
def validate(
    model: nn.Module,
    dataset: RandomCropDataset,
    indices: list[int],
    device: torch.device,
    batch: int,
    amp: str = "off",
) -> Validation:
    """Mean per-image PSNR/SSIM (clamped, uint8) of ``model`` on the given patches."""
    was_training = model.training
    model.eval()
    psnrs: list[float] = []
    ssims: list[float] = []
    inputs: list[float] = []
    strip = None
    for i in range(0, len(indices), batch):
        pairs = [dataset[j] for j in indices[i : i + batch]]
        noisy = torch.stack([p[0] for p in pairs]).to(device)
        clean = torch.stack([p[1] for p in pairs]).to(device)
        with amp_context(amp):
            out = model(noisy).float()
        psnrs += psnr_batch(out, clean).tolist()
        inputs += psnr_batch(noisy, clean).tolist()
        for o, c in zip(out, clean, strict=True):
            ssims.append(ssim(to_uint8(o), to_uint8(c)))
        if strip is None:
            strip = np.concatenate(
                [to_uint8(noisy[0]), to_uint8(out[0]), to_uint8(clean[0])], axis=1
            )
    model.train(was_training)
    assert strip is not None
    return Validation(float(np.mean(psnrs)), float(np.mean(ssims)), float(np.mean(inputs)), strip)


def _val_indices(n: int, limit: int) -> list[int]:
    if limit <= 0 or limit >= n:
        return list(range(n))
    return sorted({round(x) for x in np.linspace(0, n - 1, limit)})


def _data_identity(ds: RandomCropDataset) -> dict[str, Any]:
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
    train_ds = RandomCropDataset(train_dir, cfg.crop, augment=True, seed=cfg.seed)
    val_ds = RandomCropDataset(val_dir, cfg.val_crop, augment=False)
    for split, ds, where in (("train", train_ds, train_dir), ("val", val_ds, val_dir)):
        if len(ds) == 0:
            raise DenoiseError(f"{where}: the {split} split has no patches (see crop_split params)")
    val_idx = _val_indices(len(val_ds), cfg.val_patches)
    amp = amp_precision(d.device, cfg.amp)
    # The resolved device is part of the identity: a CPU state has no GPU run's AMP scaler.
    fp = fingerprint(
        cfg.fingerprint_fields(),
        {
            "train": _data_identity(train_ds),
            "val": _data_identity(val_ds),
            "device": d.device.type,
            "fp16": amp == "fp16",
            # each process's share of the batch, and DnCNN's BatchNorm statistics per process
            "processes": d.world,
        },
    )

    model = build_model(cfg.model, cfg.arch).to(d.device)
    try:
        check_rgb(model, cfg.model)
    except DenoiseError as e:
        raise DenoiseError(f"params.yaml train.{cfg.model}.arch: {e}") from None
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = grad_scaler(amp)
    loss_fn = LOSSES[cfg.loss]

    start = 0
    best: dict[str, Any] = {
        "psnr": -math.inf,
        "ssim": 0.0,
        "iteration": 0,
        "params": None,
        "input_psnr": math.nan,
    }
    state = load_resume(resume_path, fp, quiet=not d.main) if resume_path else None
    if state is not None and live_dir is not None:
        at = int(state["meta"]["iteration"])
        moved = d.main and history_digest(live_dir, at) != state.get("history")
        if distributed.any_rank(moved, d):  # every rank starts over, or none
            if d.main:
                print(
                    f"note: {live_dir} no longer holds the interrupted run's history up to "
                    f"iteration {at} (restored or removed?); starting from scratch"
                )
            state = None
    if state is not None:
        model.load_state_dict(state["params"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best = int(state["meta"]["iteration"]), state["best"]
        if d.main:
            print(f"resuming {cfg.model} from iteration {start} ({resume_path})")

    net: nn.Module = model
    if d.world > 1:
        if d.device.type == "cuda":  # on CPU (gloo) BatchNorm statistics stay per rank:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # SyncBN needs CUDA
        net = DistributedDataParallel(
            net, device_ids=[d.device] if d.device.type == "cuda" else None
        )
    net.train()

    sampler = IterationBatchSampler(
        len(train_ds), cfg.batch_size, cfg.seed, start=start, rank=d.rank, world=d.world
    )
    loader = DataLoader(
        EpochIndexed(train_ds),
        batch_sampler=sampler,
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
    # The losses since the last logged point: saved with the resume state, so a resume between
    # two points logs the same mean an uninterrupted run would.
    window: list[float] = list(state["loss_window"]) if state is not None else []
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
                logged = {
                    "train/loss": float(np.mean(window)),
                    "train/lr": lr,
                }
                window.clear()
            if it % cfg.val_every == 0 or it == cfg.iters:
                v = (
                    validate(model, val_ds, val_idx, d.device, cfg.val_batch, amp)
                    if d.main
                    else None
                )
                # Every rank stops together: rank 0 alone raising would leave the rest waiting.
                if distributed.any_rank(v is not None and math.isnan(v.psnr), d):
                    raise DenoiseError(
                        f"train.{cfg.model}: validation PSNR is NaN at iteration {it} "
                        "(the network outputs non-finite values); no model written"
                    )
                if v is not None:
                    logged.update({"val/psnr": v.psnr, "val/ssim": v.ssim})
                    image = v.strip
                    if v.psnr > best["psnr"]:
                        best = {
                            "psnr": v.psnr,
                            "ssim": v.ssim,
                            "iteration": it,
                            "input_psnr": v.input_psnr,
                            "params": {
                                k: t.detach().cpu().clone() for k, t in model.state_dict().items()
                            },
                        }
                    bar.set_postfix(val_psnr=f"{v.psnr:.2f}", refresh=False)
            if logged:
                tracker.log(it, logged, image, f"val/{it:07d}.png")
                bar.set_postfix(
                    loss=f"{loss_value:.4g}",
                    **({"val_psnr": f"{best['psnr']:.2f}"} if best["params"] is not None else {}),
                )
            bar.update(1)
            if it % cfg.checkpoint_every == 0 and it < cfg.iters and d.main and resume_path:
                save_resume(
                    resume_path,
                    cfg.model,
                    cfg.arch,
                    fp=fp,
                    iteration=it,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    best=best,
                    loss_window=window,
                    history=history_digest(live_dir, it) if live_dir else None,
                )
    finally:
        bar.close()
    del batches  # stops the loader's workers

    result = TrainResult(
        best["psnr"],
        best["ssim"],
        best["iteration"],
        best["input_psnr"],
        steps / step_time if step_time else math.nan,
    )
    if d.main:
        meta = {
            "iteration": best["iteration"],
            "val_psnr": best["psnr"],
            "val_ssim": best["ssim"],
            "val_psnr_input": best["input_psnr"],
            "iters": cfg.iters,
            "seed": cfg.seed,
            "crop": cfg.crop,
            "batch_size": cfg.batch_size,
            "world_size": d.world,
        }
        save_checkpoint(out_path, cfg.model, cfg.arch, best["params"], meta=meta)
        tracker.summary(
            {
                "best/val_psnr": best["psnr"],
                "best/val_ssim": best["ssim"],
                "best/iteration": best["iteration"],
                "val/psnr_input": best["input_psnr"],
            }
        )
        tracker.end()
        if resume_path:
            resume_path.unlink(missing_ok=True)
    distributed.barrier(d)
    return result
