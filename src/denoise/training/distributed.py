"""Single process or ``torchrun`` DDP: where this process runs and who it talks to.

``torchrun --nproc_per_node=N`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; then the process
group is created from the environment (NCCL on GPU, gloo on CPU). Without them everything is
a no-op and the run is a plain single process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from denoise.errors import DenoiseError, first_line


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device
    owns_group: bool  # this process created the group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass(frozen=True)
class Launch:
    """How torchrun started this process: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def launch() -> Launch:
    """This process's :class:`Launch` (one process without torchrun's variables); a value
    that is not a count, or several processes without a rank, is one line naming it."""
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = os.environ.get(name)
        if text is None:
            continue
        if not text.strip().isdecimal():
            raise DenoiseError(f"environment variable {name}={text!r}: expected a whole number")
        values[name] = int(text)
    world = values.get("WORLD_SIZE", 1)
    if world > 1 and "RANK" not in values:
        raise DenoiseError(
            f"environment variable WORLD_SIZE={world} but no RANK: start several processes "
            "with torchrun, which sets both"
        )
    if world < 1 or values.get("RANK", 0) >= world:
        raise DenoiseError(
            f"environment variables RANK={values.get('RANK', 0)}, WORLD_SIZE={world}: "
            "expected 0 <= RANK < WORLD_SIZE"
        )
    return Launch(values.get("RANK", 0), world, values.get("LOCAL_RANK", 0))


#: What ``train.device`` may say.
DEVICE_FORM = re.compile(r"auto|cpu|cuda(:[0-9]+)?", re.ASCII)
DEVICE_RULE = "must be auto, cpu, cuda or cuda:N"


def pick_device(requested: str, local_rank: int, world: int = 1) -> torch.device:
    """``auto`` or ``cuda`` mean one GPU per local rank (CUDA when available, else CPU for
    ``auto``); ``cuda:N`` pins a single-process run to GPU N."""
    if not DEVICE_FORM.fullmatch(requested):
        raise DenoiseError(f"params.yaml train.device: {DEVICE_RULE}, got {requested!r}")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DenoiseError(
                f"params.yaml train.device: {requested!r}, but CUDA is not available"
            )
        if ":" in requested and world > 1:
            raise DenoiseError(
                f"params.yaml train.device: {requested!r} would put every torchrun process on "
                "one GPU; use device: cuda (one GPU per local rank)"
            )
        return torch.device(requested if ":" in requested else f"cuda:{local_rank}")
    return torch.device("cpu")


def setup(requested_device: str) -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    started = launch()
    device = pick_device(requested_device, started.local_rank, started.world)
    if device.type == "cuda":  # also for one process on cuda:N: what torch.cuda.* ask about
        torch.cuda.set_device(device)
    if started.world <= 1:
        return Dist(0, 1, device, owns_group=False)
    owns = not dist.is_initialized()
    if owns:
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as e:  # e.g. WORLD_SIZE set by hand, no MASTER_ADDR
            hint = (
                ""
                if os.environ.get("MASTER_ADDR")
                else (
                    "; WORLD_SIZE is set but MASTER_ADDR is not: start training with torchrun, "
                    "or unset WORLD_SIZE and RANK"
                )
            )
            raise DenoiseError(
                f"torch.distributed could not start with WORLD_SIZE={started.world} "
                f"({first_line(e)}){hint}"
            ) from None
    return Dist(dist.get_rank(), dist.get_world_size(), device, owns_group=owns)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if d.world > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= d.world
    return x


def any_rank(flag: bool, d: Dist) -> bool:
    """Whether ``flag`` is true on any rank. Every rank must call it: it is also a barrier,
    so a rank that is about to stop can take the others with it instead of leaving them
    waiting in a collective."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
