"""What every stage script shares: reading its params section and reporting errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from denoise.errors import DenoiseError

PARAMS_FILE = Path("params.yaml")


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    """The whole params.yaml (stages pick their section; dvc.yaml lists what each depends on)."""
    with open(path) as f:
        return yaml.safe_load(f)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a :class:`DenoiseError` becomes ``error: ...`` and exit code 1."""
    try:
        main()
    except DenoiseError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
