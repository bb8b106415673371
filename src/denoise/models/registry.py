"""Build a network by name: the registry instead of an if/elif factory.

Each network module registers its class with :func:`register`; configs are plain dicts of the
class's constructor arguments, stored in every checkpoint so nothing downstream repeats them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from denoise.errors import DenoiseError

MODELS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        return cls

    return wrap


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate network ``name`` with constructor arguments ``config``."""
    from denoise.models import dncnn, nafnet  # noqa: F401  (importing registers them)

    if name not in MODELS:
        raise DenoiseError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**(config or {}))
    except (TypeError, ValueError) as e:  # a misspelt or mistyped arch entry in params.yaml
        raise DenoiseError(f"model {name}: bad config {config}: {e}") from None
