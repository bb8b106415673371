"""Checking a params.yaml section against the dataclass that holds it: the one definition.

A typo in params.yaml (``lr_rate`` for ``lr``) must be an error, not a silently ignored key,
and a missing file or section one line naming it, not a traceback.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from denoise.errors import DenoiseError, first_line
from denoise.paths import PARAMS_FILE


class Params(dict):
    """params.yaml's top level; a missing key is a :class:`DenoiseError` naming the file."""

    def __init__(self, data: Mapping[str, Any], path: Path) -> None:
        super().__init__(data)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise DenoiseError(f"{self.path}: no {key!r} entry")


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """The whole params.yaml (stages pick their section; dvc.yaml lists what each depends on).

    Read as DVC reads it (ruamel's safe loader, YAML 1.2), so that ``dvc params diff`` and
    ``dvc exp show`` show the values the stages used: PyYAML's YAML 1.1 reads ``010`` as 8,
    ``no`` as false and ``5e-05`` (how ``dvc exp run -S lr=5e-5`` writes it back) as a string.
    A key written twice is an error, not the last one winning.
    """
    path = Path(path)
    try:
        data = YAML(typ="safe").load(path.read_text())
    except FileNotFoundError:
        raise DenoiseError(f"{path}: not found (run from the project folder)") from None
    except UnicodeDecodeError as e:
        raise DenoiseError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DenoiseError(f"{path}: cannot read ({e.strerror or e})") from None
    except YAMLError as e:  # the problem and its line, not "while constructing a mapping"
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise DenoiseError(f"{path}: not valid YAML ({problem}{where})") from None
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
    have the fields' types (a YAML list as a tuple for a tuple field, an integer as a float for
    a float field).

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
    return _conformed(section, typing.get_type_hints(cls), f"params.yaml {where}")


def checked_arguments(cls: type, values: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``values`` checked as the whole set of ``cls``'s constructor arguments (a network's
    ``arch``), as :func:`checked_section` checks a section: each one given (no default taken
    without a word), none unknown, each of its annotated kind. ``where`` starts the errors."""
    if not isinstance(values, Mapping):
        raise DenoiseError(f"{where}: expected a mapping of keys, got {values!r}")
    accepted = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in inspect.signature(cls).parameters.values() if p.kind in accepted]
    check_keys(values, names, names, where)
    return _conformed(dict(values), typing.get_type_hints(cls.__init__), where)


def _conformed(section: dict[str, Any], hints: dict[str, Any], where: str) -> dict[str, Any]:
    """``section`` with each value conformed to its key's hint; the first problem raised."""
    for key, value in section.items():
        problem, section[key] = _conform(value, hints.get(key, Any))
        if problem:
            raise DenoiseError(f"{where}.{key}: {problem}")
    return section


def required_fields(cls: type) -> list[str]:
    """The names of ``cls``'s fields that have no default, sorted."""
    return sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init
    )


#: The seeds of the sections that seed numpy (training, export, the synthetic camera): numpy's
#: legacy ``np.random.seed`` refuses others, and one rule is easier to state than one each.
SEED_RULE = "must be an integer in 0..2**32-1"


def valid_seed(seed: int) -> bool:
    """Whether ``seed`` keeps :data:`SEED_RULE`."""
    return 0 <= seed < 2**32


def positive_finite(*values: float) -> bool:
    """Whether every value is > 0 and finite (not NaN, not infinity)."""
    return all(0 < v < math.inf for v in values)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _conform(value: Any, hint: Any) -> tuple[str | None, Any]:
    """``(problem, value)``: what is wrong with ``value`` as a ``hint`` (None: nothing), and
    the value to keep, of the hint's kind (an integral float as an int for an int field, an int
    as a float for a float field, a list as a tuple for a tuple field, also inside lists and
    mappings). Kinds other than the scalars, unions, sequences and mappings are not checked."""
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
        if ok and hint is float and not isinstance(value, bool):
            try:
                return None, float(value)
            except OverflowError:  # an integer of 400 digits
                digits = len(str(abs(value)))
                return f"expected a finite number, got an integer of {digits} digits", value
        if ok and (hint is bool or not isinstance(value, bool)):
            return None, value
        return f"expected {_KINDS[hint]}, got {value!r}", value
    if origin in (tuple, list, collections.abc.Sequence) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {value!r}", value
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            return f"expected a list of {len(args)}, got {value!r}", value
        repeated = args[-1:] == (Ellipsis,) or origin is not tuple  # tuple[int, ...], list[int]
        item_hints = [args[0]] * len(value) if repeated and args else args
        kept = []
        for item, item_hint in zip(value, item_hints or [Any] * len(value), strict=True):
            problem, item = _conform(item, item_hint)
            if problem:
                return f"{problem} in {value!r}", value
            kept.append(item)
        return None, tuple(kept) if tuple in (origin, hint) else kept
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if not isinstance(value, dict):
            return f"expected a mapping, got {value!r}", value
        kept_items = {}
        for key, item in value.items():
            problem, kept_items[key] = _conform(item, args[1] if args else Any)
            if problem:
                return f"{problem} in {value!r}", value
        return None, kept_items
    return None, value
