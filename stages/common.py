"""What every stage script shares: reading its params section and reporting errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from denoise.errors import DenoiseError
from denoise.params import load_params
from denoise.paths import PARAMS_FILE

__all__ = ["PARAMS_FILE", "load_params", "run_stage"]


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
