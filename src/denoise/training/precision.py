"""Mixed precision of a training step: which one, its autocast context and its loss scaler."""

from __future__ import annotations

import contextlib

import torch


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
