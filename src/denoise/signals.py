"""SIGTERM handled as Ctrl-C.

``timeout``, ``kill``, a CI job's cancellation, Slurm and ``dvc queue stop --kill`` end a
process with SIGTERM, whose default action skips every ``finally`` block and context exit:
the staging folders of atomic writes, temporary exports and started servers would be left
behind. Raised as KeyboardInterrupt instead, it unwinds as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only: elsewhere Python
    cannot install a handler, and the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
