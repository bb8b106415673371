"""The training configuration: the shared ``train`` params merged with one model's section."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from denoise.errors import DenoiseError
from denoise.models.registry import build_model, check_rgb, model_class, model_names
from denoise.params import (
    SEED_RULE,
    checked_arguments,
    checked_section,
    required_fields,
    valid_seed,
)

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
    arch: dict[str, Any]  # the model's constructor kwargs
    crop: int
    batch_size: int  # global batch; each of N DDP ranks takes batch_size / N
    iters: int
    val_every: int
    optimizer: str  # adamw | adam
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    eta_min: float  # cosine annealing floor, stepped per iteration
    loss: str  # psnr | l1 | mse
    grad_clip: float  # max gradient norm; 0 disables
    seed: int
    device: str  # auto | cpu | cuda | cuda:N
    amp: bool  # mixed precision on CUDA (bf16 where supported, else fp16); no-op on CPU
    num_workers: int
    checkpoint_every: int  # iterations between resume checkpoints
    log_every: int  # iterations between DVCLive train-loss points
    val_crop: int  # centre crop of each validation patch
    val_patches: int  # validation patches used (evenly spaced); 0 = all
    val_batch: int

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
        merged = checked_section(cls, {"model": model, **shared}, "train", complete=False)
        merged.update(
            checked_section(cls, {"model": model, **train[model]}, f"train.{model}", complete=False)
        )
        # No defaults here: params.yaml is the one place a training setting is written.
        missing = [k for k in required_fields(cls) if k not in merged]
        for where, keys in (
            ("train", [k for k in missing if k in SHARED_KEYS]),
            (f"train.{model}", [k for k in missing if k not in SHARED_KEYS]),
        ):
            if keys:
                raise DenoiseError(f"params.yaml {where}: missing {', '.join(keys)}")
        arch_where = f"params.yaml train.{model}.arch"
        merged["arch"] = checked_arguments(model_class(model), merged["arch"], arch_where)
        cfg = cls(**merged)
        for key, problem in cfg.problems():  # the first, named where it was written
            shared = key in SHARED_KEYS and key not in train[model]
            where = "train" if shared else f"train.{model}"
            raise DenoiseError(f"params.yaml {where}.{key}: {problem}")
        try:  # the network, built on no memory: a bad arch is named before any data is read
            with torch.device("meta"):
                check_rgb(build_model(model, cfg.arch), model)
        except DenoiseError as e:
            raise DenoiseError(f"{arch_where}: {e}") from None
        return cfg

    def problems(self) -> list[tuple[str, str]]:
        """``(key, what is wrong with its value)`` for each value out of range."""
        positive = ("iters", "val_every", "batch_size", "crop", "checkpoint_every", "log_every")
        positive += ("val_batch", "val_crop", "lr")
        checks = [(key, getattr(self, key) > 0, "must be > 0") for key in positive]
        non_negative = ("weight_decay", "eta_min", "grad_clip", "num_workers", "val_patches")
        checks += [(key, getattr(self, key) >= 0, "must be >= 0") for key in non_negative]
        from denoise.training.distributed import DEVICE_FORM, DEVICE_RULE
        from denoise.training.recipe import LOSSES, OPTIMIZERS  # recipe imports this module

        checks += [
            ("eta_min", self.eta_min <= self.lr, f"must be <= lr ({self.lr!r})"),
            (
                "betas",
                len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                "must be two numbers in [0, 1)",
            ),
            ("loss", self.loss in LOSSES, f"must be one of {', '.join(LOSSES)}"),
            ("seed", valid_seed(self.seed), SEED_RULE),
            ("device", DEVICE_FORM.fullmatch(self.device) is not None, DEVICE_RULE),
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
