"""Checking a params.yaml section against the dataclass that holds it: the one definition.

A typo in params.yaml (``lr_rate`` for ``lr``) must be an error, not a silently ignored key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from denoise.errors import DenoiseError


def checked_section(cls: type, section: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A copy of ``section`` whose keys are ``cls``'s fields: none unknown, none required missing.

    ``where`` names the section in the error, e.g. ``"export"`` or ``"train.nafnet"``.
    """
    section = dict(section or {})
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init
    }
    missing = sorted(required - set(section))
    unknown = sorted(set(section) - known)
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise DenoiseError(f"params.yaml {where}: {'; '.join(parts)}")
    return section
