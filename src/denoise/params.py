"""Checking a params.yaml section against the dataclass that holds it: the one definition.

A typo in params.yaml (``lr_rate`` for ``lr``) must be an error, not a silently ignored key,
and a missing file or section one line naming it, not a traceback.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
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


def checked_section(
    cls: type, section: Mapping[str, Any] | None, where: str, *, complete: bool = True
) -> dict[str, Any]:
    """A copy of ``section`` whose keys are ``cls``'s fields (none unknown, none required
    missing unless ``complete`` is false: a part that is merged with others) and whose values
    have the fields' types.

    ``where`` names the section in the error, e.g. ``"export"`` or ``"train.nafnet"``. An int
    field takes an integral float (``dvc exp run -S train.nafnet.iters=2e5`` writes 200000.0)
    as that int; any other mismatch is one line naming the key, e.g. ``params.yaml
    train.nafnet.iters: expected an integer, got '4000'``.
    """
    if section is not None and not isinstance(section, Mapping):
        raise DenoiseError(f"params.yaml {where}: expected a mapping of keys, got {section!r}")
    section = dict(section or {})
    fields = dataclasses.fields(cls)
    required = required_fields(cls) if complete else []
    check_keys(section, required, {f.name for f in fields}, f"params.yaml {where}")
    hints = typing.get_type_hints(cls)
    for key, value in section.items():
        problem, section[key] = _conform(value, hints[key])
        if problem:
            raise DenoiseError(f"params.yaml {where}.{key}: {problem}")
    return section


def required_fields(cls: type) -> list[str]:
    """The names of ``cls``'s fields that have no default, sorted."""
    return sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init
    )


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _conform(value: Any, hint: Any) -> tuple[str | None, Any]:
    """``(problem, value)``: what is wrong with ``value`` as a ``hint`` (None: nothing), and
    the value to keep (an integral float as an int for an int field). Kinds other than the
    scalars, unions, sequences and mappings are not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, None
        problems = []
        for arg in (a for a in args if a is not type(None)):
            problem, kept = _conform(value, arg)
            if problem is None:
                return None, kept
            problems.append(problem.removeprefix("expected "))
        return f"expected {' or '.join(problems)}", value
    if hint in _KINDS:
        if hint is int and isinstance(value, float) and value.is_integer():
            return None, int(value)
        ok = isinstance(value, (int, float) if hint is float else hint)
        if ok and (hint is bool or not isinstance(value, bool)):
            return None, value
        return f"expected {_KINDS[hint]}, got {value!r}", value
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {value!r}", value
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            return f"expected a list of {len(args)}, got {value!r}", value
        item_hints = [args[0]] * len(value) if args[-1:] == (Ellipsis,) or origin is list else args
        kept = []
        for item, item_hint in zip(value, item_hints or [Any] * len(value), strict=True):
            problem, item = _conform(item, item_hint)
            if problem:
                return f"{problem} in {value!r}", value
            kept.append(item)
        return None, type(value)(kept)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, dict):
            return f"expected a mapping, got {value!r}", value
        if args:
            for item in value.values():
                problem, _ = _conform(item, args[1])
                if problem:
                    return f"{problem} in {value!r}", value
    return None, value
