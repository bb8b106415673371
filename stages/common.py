"""What every stage script shares: reading its params section and reporting errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from denoise.errors import DenoiseError
from denoise.params import load_params
from denoise.paths import PARAMS_FILE
from denoise.signals import INTERRUPTED_EXIT, TERMINATED_EXIT, Terminated, sigterm_as_interrupt

__all__ = ["PARAMS_FILE", "load_params", "run_stage"]


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a :class:`DenoiseError` becomes ``error: ...`` and exit code 1, and
    Ctrl-C ``interrupted`` and 130, SIGTERM (:mod:`denoise.signals`) ``terminated`` and 143,
    each after the stage's cleanup has run."""
    try:
        with sigterm_as_interrupt():
            main()
    except DenoiseError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(TERMINATED_EXIT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)
