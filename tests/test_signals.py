"""SIGTERM (``timeout``, ``kill``, a cancelled CI job) unwinds a command or a stage as Ctrl-C
does: the cleanup of atomic writes and temporaries runs instead of being skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from denoise.signals import Terminated, sigterm_as_interrupt

REPO = Path(__file__).resolve().parents[1]

# A command (the CLI's wrapper) or a stage (the stage runner) killed while a write is staged.
PROGRAM = """
import sys, time
sys.path.insert(0, {stages!r})
from common import run_stage
from denoise.cli import user_errors
from denoise.fileio import atomic_path

def work():
    with atomic_path({target!r}) as tmp:
        tmp.mkdir()
        print("staged", flush=True)
        time.sleep(60)

run_stage(work) if {wrapper!r} == "stage" else user_errors(work)()
"""


def test_sigterm_raises_keyboard_interrupt_inside_and_is_restored_after() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="signal 15"), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 5)  # a bytecode boundary for the handler to run at
    assert issubclass(Terminated, KeyboardInterrupt)  # so every Ctrl-C cleanup runs for it
    assert signal.getsignal(signal.SIGTERM) == before


def test_one_of_several_torchrun_processes_keeps_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rank blocked in a collective runs no Python handler: SIGTERM must still end it.
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) == before
    for unusual in ("", "1", "abc"):  # one process, or not torchrun's: the handler, no crash
        monkeypatch.setenv("WORLD_SIZE", unusual)
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) != before


@pytest.mark.parametrize("wrapper", ["command", "stage"])
def test_a_killed_command_or_stage_leaves_no_staging_behind(tmp_path: Path, wrapper: str) -> None:
    target = tmp_path / "out"
    code = PROGRAM.format(stages=str(REPO / "stages"), target=str(target), wrapper=wrapper)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "staged\n"
        assert [p.name for p in tmp_path.iterdir()] != []  # the staging folder, beside out
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip() == "terminated", err  # it unwound, exited
    assert list(tmp_path.iterdir()) == [], err  # no staging folder, no half-written output
