"""Training throughput: samples/s per model and crop size, and the share of a step spent
waiting for data.

Uses the models and recipes of params.yaml (``train.<model>``) and the real patch store
(data/split/train), at the default crop and at the paper-scale crop (256), for a few
iterations each. The data wait is the time ``next(loader)`` blocks, as a share of the step.

    python benchmarks/train_throughput.py [--iters 20] [--crops default 256] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

from common import load_params  # noqa: E402

from denoise.data.patch_store import RandomCropDataset  # noqa: E402
from denoise.models.registry import build_model  # noqa: E402
from denoise.paths import PARAMS_FILE, TRAIN_DIR  # noqa: E402
from denoise.training.config import TrainConfig  # noqa: E402
from denoise.training.distributed import pick_device  # noqa: E402
from denoise.training.precision import amp_context, amp_precision, grad_scaler  # noqa: E402
from denoise.training.recipe import LOSSES, build_optimizer, optimizer_step  # noqa: E402
from denoise.training.sampling import EpochIndexed, IterationBatchSampler  # noqa: E402


def measure(
    cfg: TrainConfig,
    train_dir: Path,
    crop: int,
    iters: int,
    warmup: int = 2,
    batch_size: int | None = None,
) -> dict[str, float | int | str]:
    """Time ``iters`` training steps (after ``warmup`` untimed ones) of one model and crop."""
    device = pick_device(cfg.device, 0)
    batch = batch_size or cfg.batch_size
    amp = amp_precision(device, cfg.amp)  # as in training
    scaler = grad_scaler(amp)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.arch).to(device).train()
    optimizer = build_optimizer(cfg, model)
    loss_fn = LOSSES[cfg.loss]
    ds = RandomCropDataset(train_dir, crop, seed=cfg.seed)
    loader = DataLoader(
        EpochIndexed(ds),
        num_workers=cfg.num_workers,
        batch_sampler=IterationBatchSampler(len(ds), batch, cfg.seed),
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    wait = total = 0.0
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        noisy, clean = next(batches)
        noisy, clean = noisy.to(device), clean.to(device)
        t1 = time.perf_counter()
        with amp_context(amp):
            out = model(noisy)
        optimizer_step(loss_fn(out.float(), clean), model, optimizer, scaler, cfg.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= warmup:
            wait += t1 - t0
            total += t2 - t0
    del batches
    return {
        "model": cfg.model,
        "crop": crop,
        "batch": batch,
        "device": str(device),
        "amp": amp,
        "samples_per_s": round(iters * batch / total, 2),
        "step_s": round(total / iters, 4),
        "data_wait_pct": round(100 * wait / total, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per setting")
    ap.add_argument("--models", nargs="+", default=["nafnet", "dncnn"])
    ap.add_argument(
        "--crops",
        nargs="+",
        default=["default", "256"],
        help="crop sizes; 'default' is train.<model>.crop",
    )
    ap.add_argument(
        "--paper-batch",
        type=int,
        default=4,
        help="batch at crop 256 (the paper's 32 does not fit a short CPU run)",
    )
    ap.add_argument("--data", type=Path, default=REPO / TRAIN_DIR)
    ap.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()

    params = load_params(REPO / PARAMS_FILE)["train"]
    rows = []
    for name in args.models:
        cfg = TrainConfig.from_params(params, name)
        for crop in args.crops:
            size = cfg.crop if crop == "default" else int(crop)
            batch = None if crop == "default" else args.paper_batch
            rows.append(measure(cfg, args.data, size, args.iters, batch_size=batch))
            r = rows[-1]
            print(
                f"{r['model']:>7} crop {r['crop']:>4} batch {r['batch']:>3}  "
                f"{r['samples_per_s']:>8.2f} samples/s  {r['step_s']:>7.3f} s/step  "
                f"data wait {r['data_wait_pct']:>5.2f}%  ({r['device']}, amp {r['amp']})",
                flush=True,
            )
    worst = max(float(r["data_wait_pct"]) for r in rows)
    print(f"worst data-wait share: {worst:.2f}% (target < 5%)")
    if args.json:
        from denoise.fileio import write_json

        write_json(
            args.json,
            {
                "rows": rows,
                "torch_threads": torch.get_num_threads(),
                "numpy": np.__version__,
                "torch": torch.__version__,
            },
        )


if __name__ == "__main__":
    main()
