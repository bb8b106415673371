"""The multiple a network pads its input's height and width to: found on the module, recorded
by the export (in the ONNX file's metadata and the Triton configs of the models served from
it), read back by every backend, which then reflect-pads its tiles to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from denoise.errors import DenoiseError

if TYPE_CHECKING:
    from torch import nn

# The key under which the export records the multiple.
PAD_MULTIPLE_KEY = "pad_multiple"


def pad_multiple_value(value: str | None, where: str) -> int:
    """A recorded padding multiple (None: not recorded, 1); a DenoiseError naming ``where``
    unless it is a whole number >= 1."""
    if value is None:
        return 1
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise DenoiseError(f"{where}: {PAD_MULTIPLE_KEY} {value!r} is not a whole number >= 1")
    return int(value)


def pad_multiple_of(module: nn.Module) -> int:
    """The multiple a network pads its input's height and width to (NAFNet: 2^levels; 1: none).

    NAFNet pads with zeros below and right, as its reference code does. On an input that is not
    a multiple (a whole odd-sized photo, or one smaller than a tile) that dark border spoils the
    bottom and right edges (``benchmarks/edge_padding.py`` measures it), so
    :func:`denoise.infer.denoise_image` reflect-pads tiles to the multiple first
    (:func:`reflect_pad`); the network's own zero padding then does nothing.
    """
    return int(getattr(module, "padder_size", 1))


def reflect_pad(batch: np.ndarray, multiple: int) -> np.ndarray:
    """``(N, C, H, W)`` reflect-padded below and right to multiples of ``multiple``."""
    ph, pw = -batch.shape[2] % multiple, -batch.shape[3] % multiple
    return np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect") if ph or pw else batch
