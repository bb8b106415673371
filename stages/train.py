"""Stage train-nafnet / train-dncnn: ``python stages/train.py nafnet|dncnn``.

Reads data/split/{train,val}, writes models/<name>.pt (best weights by val PSNR) and the
DVCLive folder dvclive/<name>. The resume state lives in checkpoints/<name>/last.pt, outside
the stage's outputs, so DVC does not delete it before a re-run. Also runs under
``torchrun --nproc_per_node=N stages/train.py <name>`` (DDP).
"""

from __future__ import annotations

import sys

from common import load_params, run_stage

from denoise.checkpoint import checkpoint_path
from denoise.errors import DenoiseError
from denoise.models.registry import model_names
from denoise.paths import CHECKPOINTS_DIR, DVCLIVE_DIR, TRAIN_DIR, VAL_DIR
from denoise.train import train_model
from denoise.training import distributed
from denoise.training.config import TrainConfig


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in model_names():
        raise DenoiseError(f"usage: python stages/train.py {'|'.join(model_names())}")
    name = sys.argv[1]
    cfg = TrainConfig.from_params(load_params()["train"], name)
    result = train_model(
        cfg,
        TRAIN_DIR,
        VAL_DIR,
        checkpoint_path(name),
        resume_path=CHECKPOINTS_DIR / name / "last.pt",
        live_dir=DVCLIVE_DIR / name,
    )
    if distributed.launch().rank != 0:
        return  # under torchrun only rank 0 validates: the others have no scores to print
    print(
        f"{name}: best val PSNR {result.best_psnr:.2f} dB / SSIM {result.best_ssim:.4f} at "
        f"iteration {result.best_iteration} (noisy input {result.input_psnr:.2f} dB), "
        f"{result.iterations_per_s:.2f} it/s"
    )


if __name__ == "__main__":
    run_stage(main)
