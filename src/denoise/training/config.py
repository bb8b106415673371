"""The training configuration: the shared ``train`` params merged with one model's section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from denoise.errors import DenoiseError
from denoise.models.registry import model_names
from denoise.params import checked_section

#: Keys of the shared ``train`` section that are not per-model sections.
SHARED_KEYS = (
    "seed",
    "device",
    "amp",
    "num_workers",
    "checkpoint_every",
    "log_every",
    "val_crop",
    "val_patches",
    "val_batch",
)


@dataclass
class TrainConfig:
    """Everything one training run depends on (``params.yaml`` ``train`` + ``train.<model>``)."""

    model: str
    arch: dict[str, Any] = field(default_factory=dict)
    crop: int = 64
    batch_size: int = 8  # global batch; each of N DDP ranks takes batch_size / N
    iters: int = 1000
    val_every: int = 250
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.9)
    weight_decay: float = 0.0
    eta_min: float = 1e-7  # cosine annealing floor, stepped per iteration
    loss: str = "psnr"  # psnr | l1 | mse
    grad_clip: float = 0.0  # max gradient norm; 0 disables
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16); no-op on CPU
    num_workers: int = 0
    checkpoint_every: int = 100  # iterations between resume checkpoints
    log_every: int = 10  # iterations between DVCLive train-loss points
    val_crop: int = 128  # centre crop of each validation patch
    val_patches: int = 0  # validation patches used (evenly spaced); 0 = all
    val_batch: int = 8

    @classmethod
    def from_params(cls, train: dict[str, Any], model: str) -> TrainConfig:
        """Build from the ``train`` params section; unknown keys are an error (typos), in the
        model's section and beside it (a key that is neither shared nor a model's name)."""
        unknown = sorted(set(train) - set(SHARED_KEYS) - set(model_names()))
        if unknown:
            raise DenoiseError(f"params.yaml train: unknown {', '.join(unknown)}")
        if model not in train or not isinstance(train[model], dict):
            raise DenoiseError(f"params.yaml: no train.{model} section")
        if "model" in train[model]:
            raise DenoiseError(f"params.yaml train.{model}: unknown model (the section names it)")
        # Checked where they are written, so an error names train.<key> or train.<model>.<key>.
        shared = {k: train[k] for k in SHARED_KEYS if k in train}
        merged = checked_section(cls, {"model": model, **shared}, "train")
        merged.update(checked_section(cls, {"model": model, **train[model]}, f"train.{model}"))
        if "betas" in merged:
            merged["betas"] = tuple(merged["betas"])
        cfg = cls(**merged)
        for key, problem in cfg.problems():  # the first, named where it was written
            shared = key in SHARED_KEYS and key not in train[model]
            where = "train" if shared else f"train.{model}"
            raise DenoiseError(f"params.yaml {where}.{key}: {problem}")
        return cfg

    def problems(self) -> list[tuple[str, str]]:
        """``(key, what is wrong with its value)`` for each value out of range."""
        positive = ("iters", "val_every", "batch_size", "crop", "checkpoint_every", "log_every")
        positive += ("val_batch", "val_crop", "lr")
        checks = [(key, getattr(self, key) > 0, "must be > 0") for key in positive]
        non_negative = ("weight_decay", "eta_min", "grad_clip", "num_workers", "val_patches")
        checks += [(key, getattr(self, key) >= 0, "must be >= 0") for key in non_negative]
        from denoise.training.recipe import LOSSES, OPTIMIZERS  # recipe imports this module

        checks += [
            ("eta_min", self.eta_min <= self.lr, f"must be <= lr ({self.lr!r})"),
            (
                "betas",
                len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                "must be two numbers in [0, 1)",
            ),
            ("loss", self.loss in LOSSES, f"must be one of {', '.join(LOSSES)}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
        ]
        return [(key, f"{rule}, got {getattr(self, key)!r}") for key, ok, rule in checks if not ok]

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that change the result (a resume state from other values is stale)."""
        d = dataclasses.asdict(self)
        # log_every stays: a resumed run's curves must have one logging interval throughout;
        # so does val_batch: the batch moves a validation's scores in their last digits
        for k in ("device", "num_workers", "checkpoint_every"):
            d.pop(k)
        return d
