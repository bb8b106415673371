"""The ``denoise`` command: clean photos, score models, serve them.

Every subcommand turns a :class:`DenoiseError` into one ``error: ...`` line and exit code 1.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

from denoise import __version__
from denoise.errors import DenoiseError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Real-image denoising for smartphone photos (NAFNet, DnCNN).")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report DenoiseError as one line and exit 1 instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DenoiseError as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(1)
    return wrapper


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(__version__)


# Subcommands are added below, one function each (score, run, serve, bench).
