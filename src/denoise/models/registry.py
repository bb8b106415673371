"""Build a network by name: the registry instead of an if/elif factory.

Each network module registers its class with :func:`register`; configs are plain dicts of the
class's constructor arguments, stored in every checkpoint so nothing downstream repeats them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from denoise.errors import DenoiseError

MODELS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        return cls

    return wrap


def _register_all() -> None:
    from denoise.models import dncnn, nafnet  # noqa: F401  (importing registers them)


def model_names() -> list[str]:
    """The names of the registered networks (params.yaml's ``model``, a checkpoint's)."""
    _register_all()
    return sorted(MODELS)


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; an unknown name is a :class:`DenoiseError`."""
    if name not in model_names():
        raise DenoiseError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return MODELS[name]


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate network ``name`` with constructor arguments ``config``."""
    cls = model_class(name)
    try:
        return cls(**(config or {}))
    except (TypeError, ValueError) as e:  # a misspelt or mistyped arch entry in params.yaml
        raise DenoiseError(f"{name} config: {e}") from None  # the config itself: too long


def check_rgb(model: nn.Module, name: str) -> None:
    """A :class:`DenoiseError` unless network ``name`` takes and gives 3-channel images: the
    photos, pairs and exports of this project are all RGB."""
    channels = getattr(model, "channels", (3, 3))
    if channels != (3, 3):
        raise DenoiseError(
            f"a {name} for {channels[0]}-channel input and {channels[1]}-channel "
            "output; denoise works on RGB photos (3 channels in and out)"
        )


def infer_architecture(
    state_dict: Mapping[str, torch.Tensor], name: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The network (name, constructor arguments) whose weights ``state_dict`` holds.

    For files that carry weights only (the official NAFNet and KAIR releases); each network
    reads its own key layout (``config_from_state_dict``), only network ``name`` if given.
    Loading the weights afterwards (strictly) is what confirms the guess. What weights cannot
    show is not recovered: a KAIR IRCNN (dilated convolutions) would read as a DnCNN.
    """
    _register_all()
    candidates = [name] if name is not None else list(MODELS)
    for candidate in candidates:
        cls = model_class(candidate)
        config = cls.config_from_state_dict(state_dict)  # type: ignore[attr-defined]
        if config is not None:
            return candidate, config
    if name is not None:
        raise DenoiseError(f"the weights are not a {name}'s")
    raise DenoiseError(f"the weights fit no known network ({', '.join(sorted(MODELS))})")
