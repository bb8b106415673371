"""Checking a params.yaml section against the dataclass that holds it: the one definition.

A typo in params.yaml (``lr_rate`` for ``lr``) must be an error, not a silently ignored key,
and a missing file or section one line naming it, not a traceback.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from denoise.errors import DenoiseError, first_line
from denoise.paths import PARAMS_FILE


class Params(dict):
    """params.yaml's top level; a missing key is a :class:`DenoiseError` naming the file."""

    def __init__(self, data: Mapping[str, Any], path: Path) -> None:
        super().__init__(data)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise DenoiseError(f"{self.path}: no {key!r} entry")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats in exponent form as YAML 1.2 does. PyYAML follows
    YAML 1.1, where such a float needs a dot and a signed exponent: ``1e-06`` and ``1.0e5``
    would be strings. ``dvc exp run -S train.nafnet.lr=5e-5`` writes the value back into
    params.yaml just so (``5e-05``)."""


_Loader.add_implicit_resolver(  # copies SafeLoader's resolvers first: SafeLoader is unchanged
    "tag:yaml.org,2002:float",
    # what YAML 1.1's rule lacks: an exponent after no dot (5e-05), or one without a sign
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """The whole params.yaml (stages pick their section; dvc.yaml lists what each depends on)."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader
    except FileNotFoundError:
        raise DenoiseError(f"{path}: not found (run from the project folder)") from None
    except yaml.YAMLError as e:
        raise DenoiseError(f"{path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise DenoiseError(f"{path}: expected a mapping of sections at the top level")
    return Params(data, path)


def check_keys(
    section: Mapping[str, Any], required: Iterable[str], known: Iterable[str], where: str
) -> None:
    """A one-line :class:`DenoiseError`, ``<where>: missing a, b; unknown c``, if a required
    key is missing from ``section`` or one of its keys is not ``known`` (a typo)."""
    missing = [k for k in required if k not in section]
    unknown = sorted(set(section) - set(known))
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise DenoiseError(f"{where}: {'; '.join(parts)}")


def checked_section(cls: type, section: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A copy of ``section`` whose keys are ``cls``'s fields: none unknown, none required missing.

    ``where`` names the section in the error, e.g. ``"export"`` or ``"train.nafnet"``.
    """
    section = dict(section or {})
    fields = dataclasses.fields(cls)
    required = sorted(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init
    )
    check_keys(section, required, {f.name for f in fields}, f"params.yaml {where}")
    return section
