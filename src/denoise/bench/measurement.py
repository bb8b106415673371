"""Measuring one path: timing, on-GPU timing, PSNR outputs, peak memory, in its own process."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoise.bench.paths import BenchPath
from denoise.flops import strict_fp32
from denoise.metrics import to_uint8
from denoise.signals import die_with_parent


@dataclass(frozen=True)
class Job:
    """Everything a (possibly separate) process needs to measure one path."""

    path: BenchPath
    model_file: str
    timing_input: np.ndarray  # (batch, 3, size, size) uint8
    psnr_inputs: np.ndarray  # (count, 3, size, size) uint8
    batch: int
    repeats: int
    warmup: int
    threads: int


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside the block and put back after it: a
    bench run inside another program (a test session, a notebook) leaves its count alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(job: Job, fresh_process: bool = False) -> dict[str, Any]:
    """:func:`_measure` on ``job.threads`` threads, with TF32 off for the FP32 paths (true
    FP32 on CUDA, as the FP32 peak is measured)."""
    with torch_threads(job.threads), strict_fp32(job.path.precision == "fp32"):
        return _measure(job, fresh_process)


def _measure(job: Job, fresh_process: bool) -> dict[str, Any]:
    """Open the backend, time it and run it over the PSNR images; returns raw measurements.

    ``peak_rss_mb`` is the path's own peak: in a process that measured other paths before,
    the counter is first started afresh, and where that is not possible it is None rather
    than another path's figure.
    """
    from denoise.infer import open_backend

    own_peak = reset_peak_memory() or fresh_process
    options = dict(job.path.options)
    if job.path.backend == "torch":
        # Every timed batch has one shape: let cuDNN pick its fastest algorithms (CUDA only).
        options |= {"precision": job.path.precision, "cudnn_benchmark": True}
    elif job.path.backend == "onnxruntime":
        options["threads"] = job.threads
    t0 = time.perf_counter()
    backend = open_backend(job.path.backend, job.model_file, **options)
    open_s = time.perf_counter() - t0
    x = job.timing_input.astype(np.float32) / 255.0
    t0 = time.perf_counter()
    backend(x)
    first_call_s = time.perf_counter() - t0
    for _ in range(job.warmup):
        backend(x)
    times = []
    for _ in range(job.repeats):
        t0 = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - t0)
    on_device = device_times(backend, x, job.repeats)
    outputs, nonfinite = [], 0
    imgs = job.psnr_inputs
    for i in range(0, len(imgs), job.batch):
        group = imgs[i : i + job.batch]
        pad = job.batch - len(group)  # keep one input shape (compiled graphs, CUDA graphs)
        if pad:
            group = np.concatenate([group, np.repeat(group[-1:], pad, axis=0)])
        out = backend(group.astype(np.float32) / 255.0)[: job.batch - pad]
        finite = np.isfinite(out)
        nonfinite += int(finite.size - np.count_nonzero(finite))
        outputs += [to_uint8(o.transpose(1, 2, 0)) for o in np.where(finite, out, 0.0)]
    stacked = np.stack(outputs)
    result: dict[str, Any] = {
        "times_s": times,
        "open_s": open_s,
        "first_call_s": first_call_s,
        "outputs": stacked,
        # A miscompiled kernel returns NaN: the PSNR alone would call that merely "worse".
        "nonfinite_fraction": nonfinite / stacked.size,
        "peak_rss_mb": peak_rss_mb() if own_peak else None,
    }
    if on_device:
        result["device_times_s"] = on_device
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def device_times(backend: Any, x: np.ndarray, repeats: int) -> list[float]:
    """On CUDA, the network alone: ``repeats`` timed forwards of a batch already on the GPU.

    The end-to-end times above also copy the batch to the GPU and the result back from
    pageable host memory (on an H200 that added 28% to compiled bf16 NAFNet-w32 at batch 8):
    what a caller holding numpy arrays pays, not what the GPU does when a pipelined loader
    feeds it. Empty where the backend is not a torch module on CUDA.
    """
    device = getattr(backend, "device", None)
    if not (isinstance(device, torch.device) and device.type == "cuda"):
        return []
    x_dev = backend.prepare(x)
    backend.forward(x_dev)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        backend.forward(x_dev)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def reset_peak_memory() -> bool:
    """Start this process's peak-memory counters afresh; False where the RSS one cannot be.

    Writing 5 to ``/proc/self/clear_refs`` sets ``VmHWM`` to the current resident size
    (Linux); torch's CUDA peak is reset beside it.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB).

    ``VmHWM`` from /proc where there is one: ``ru_maxrss`` of a spawned child starts at the
    parent's resident size at fork time (Linux keeps it across exec), so it would report the
    parent's peak rather than the child's own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_isolated(job: Job) -> dict[str, Any]:
    """:func:`measure` in a fresh spawned process, so its peak RSS is its own.

    The worker ends with the command: at once on Ctrl-C or SIGTERM (leaving the pool would
    otherwise wait for the measurement, minutes for a compiled path), and through the kernel's
    parent-death signal if the command is killed outright."""
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=ctx, initializer=_end_with_parent, initargs=(os.getpid(),)
    )
    try:
        return pool.submit(measure, job, True).result()
    except BaseException:
        for worker in list(pool._processes.values()):  # Python 3.14: pool.terminate_workers()
            worker.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _end_with_parent(parent: int) -> None:
    """The bench worker's first step: SIGTERM when the command dies, also if it already has."""
    arm = die_with_parent()
    if arm is not None:
        arm()
    if os.getppid() != parent:
        os._exit(1)


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One path's measurements over several rounds as one (a single round passes through).

    The timed calls of all rounds are pooled (``times_s``) and each round's median is kept
    (``round_medians_s``); outputs, opening and first-call times are the first round's (later
    rounds find compiled kernels cached), peak memory and the share of NaN/inf the worst.
    A round that failed makes the path's result that error.
    """
    if len(rounds) == 1 or any("error" in r for r in rounds):
        return next((r for r in rounds if "error" in r), rounds[0])
    first = rounds[0]
    merged = dict(first)
    merged["times_s"] = [t for r in rounds for t in r["times_s"]]
    merged["round_medians_s"] = [statistics.median(r["times_s"]) for r in rounds]
    peaks = [r["peak_rss_mb"] for r in rounds]
    merged["peak_rss_mb"] = None if None in peaks else max(peaks)
    merged["nonfinite_fraction"] = max(r["nonfinite_fraction"] for r in rounds)
    if "device_times_s" in first:
        merged["device_times_s"] = [t for r in rounds for t in r["device_times_s"]]
    if "peak_cuda_mb" in first:
        merged["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in rounds)
    return merged
