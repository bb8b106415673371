"""SIGTERM handled as Ctrl-C.

``timeout``, ``kill``, a CI job's cancellation, Slurm and ``dvc queue stop --kill`` end a
process with SIGTERM, whose default action skips every ``finally`` block and context exit:
the staging folders of atomic writes, temporary exports and started servers would be left
behind. Raised as :class:`Terminated` (a KeyboardInterrupt) instead, it unwinds as Ctrl-C
does; the command or stage then exits 143, as a process SIGTERM ends does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

#: The exit code of a process ended by SIGTERM (128 + 15), and by Ctrl-C (128 + 2).
TERMINATED_EXIT, INTERRUPTED_EXIT = 128 + signal.SIGTERM, 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that cleanup runs."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`.

    Not outside the main thread (Python cannot install a handler there), and not in one of
    several torchrun processes: a rank waiting in a collective (all_reduce on a hung peer)
    runs no Python handler, so SIGTERM would no longer end it and torchrun's teardown would
    wait for its SIGKILL.
    """
    # Read here, not with training.distributed.launch(): this module must not import torch,
    # nor fail on a value launch() refuses (the command it guards reports that one).
    world = os.environ.get("WORLD_SIZE", "").strip()
    several = world.isdecimal() and int(world) > 1
    if several or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def die_with_parent() -> Callable[[], None] | None:
    """A callable that makes the process calling it get SIGTERM when its parent dies (Linux's
    ``PR_SET_PDEATHSIG``), so a parent killed with SIGKILL leaves no server or worker running;
    None where there is none. libc is loaded here, in the parent: as a ``preexec_fn`` it runs
    between fork and exec, where nothing may be imported."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm)
