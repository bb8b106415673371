"""GPU throughput with the host copies overlapped with the network, beside the bench's two figures.

    python benchmarks/pipelined_throughput.py [--path torch-bf16-fused-graphs] [--batch 8]
        [--size 512] [--batches 100] [--rounds 3] [--json OUT]

``denoise bench`` times a CUDA path two ways: end to end (a float32 numpy batch copied in from
pageable memory, the result copied back, one batch after the other: what a caller holding numpy
arrays pays) and the network alone (the batch already on the GPU). A serving loop sits between
the two: its batches wait in pinned host memory, and while the network runs one batch a copy
stream brings the next one in and another takes the previous result out. This script opens
one path (paper-size NAFNet-w32, perturbed random weights, as the bench) and measures, in one
process and side by side:

- ``end_to_end``: the bench's end-to-end figure (median of ``--repeats`` calls on a pageable
  float32 batch);
- ``on_device``: the bench's network-alone figure;
- ``pipelined_uint8``: ``--batches`` batches of 8-bit pixels (a photo's own form: a quarter of
  float32's bytes) through two input and two output buffers, converted to and from the
  network's input and output on the GPU; images/s is the median of ``--rounds`` rounds;
- ``pipelined_float32``: the same with float32 pixels in and out, as the bench's batches.

The batches are already in pinned memory: copying a caller's arrays there is not counted.
Before the timed rounds, each form runs once keeping every batch's output: the three host
batches cycle through the two buffers, so a buffer used before its copy finished would hold
another batch, and each output is compared with the end-to-end path's output of the same input
(``max_abs_diff``, in 8-bit levels for uint8): the overlap must not change a pixel. CUDA only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from denoise.bench.inputs import prepare_model, synthetic_pairs
from denoise.bench.measurement import device_times
from denoise.bench.paths import select_paths
from denoise.fileio import write_json
from denoise.infer import TorchBackend, open_backend
from denoise.metrics import to_uint8

SLOTS = 2  # buffers each way: one batch in flight on the copy streams, one in the network
BATCHES = 3  # distinct host batches; prime to SLOTS, so a buffer never holds the same one twice


def network_input(backend: TorchBackend, pixels: torch.Tensor) -> torch.Tensor:
    """A fresh tensor the network runs, from ``pixels`` on the device (uint8 0-255 or float32
    0-1), exactly as :meth:`TorchBackend.prepare` makes it from the float32 numpy batch.

    Made outside inference mode, as ``prepare``'s: an inference tensor would make
    ``torch.compile`` compile (and capture) the network a second time."""
    x = pixels.to(torch.float32, copy=True)
    if pixels.dtype == torch.uint8:
        # Divided by a tensor: by a Python number, CUDA multiplies by its reciprocal, one bit
        # off numpy's division for some levels.
        x.div_(torch.full((), 255.0, device=x.device))
    if not backend.amp:
        x = x.to(backend.dtype)
    if backend.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def network_output(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The network's output as ``dtype`` pixels (uint8 rounded as ``to_uint8`` rounds)."""
    y = y.float()
    if dtype == torch.uint8:
        return torch.round(y.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return y.clone()


def pipelined(
    backend: TorchBackend, host_batches: list[torch.Tensor], count: int, keep: bool = False
) -> tuple[float, list[torch.Tensor]]:
    """Seconds for ``count`` batches (cycling through the pinned ``host_batches``) with the
    copies on two streams of their own, and the host buffers the outputs went to: ``SLOTS`` of
    them, or with ``keep`` one per batch (each batch's output, to check).

    Events order the three streams: an input buffer is refilled only after the network's input
    was made from it, an output buffer rewritten only after its copy to the host finished.
    """
    device = backend.device
    compute = torch.cuda.current_stream(device)
    copy_in, copy_out = torch.cuda.Stream(device), torch.cuda.Stream(device)
    like = host_batches[0]
    dev_in = [torch.empty(like.shape, dtype=like.dtype, device=device) for _ in range(SLOTS)]
    dev_out = [torch.empty(like.shape, dtype=like.dtype, device=device) for _ in range(SLOTS)]
    outputs = count if keep else SLOTS
    host_out = [torch.empty(like.shape, dtype=like.dtype, pin_memory=True) for _ in range(outputs)]
    uploaded, consumed, converted, downloaded = (
        [torch.cuda.Event() for _ in range(SLOTS)] for _ in range(4)
    )

    def upload(i: int) -> None:
        s = i % SLOTS
        with torch.cuda.stream(copy_in):
            copy_in.wait_event(consumed[s])
            dev_in[s].copy_(host_batches[i % len(host_batches)], non_blocking=True)
            uploaded[s].record(copy_in)

    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    upload(0)
    for i in range(count):
        s = i % SLOTS
        if i + 1 < count:
            upload(i + 1)
        compute.wait_event(uploaded[s])
        x = network_input(backend, dev_in[s])
        consumed[s].record(compute)
        y = backend.forward(x)  # in inference mode; its output is read below, before the next
        compute.wait_event(downloaded[s])
        dev_out[s].copy_(network_output(y, like.dtype))
        converted[s].record(compute)
        with torch.cuda.stream(copy_out):
            copy_out.wait_event(converted[s])
            host_out[i % outputs].copy_(dev_out[s], non_blocking=True)
            downloaded[s].record(copy_out)
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0, host_out


def rate(batch: int, seconds: list[float], per: int = 1) -> float:
    """Images/s from the median of ``seconds``, each for ``per`` batches."""
    return round(batch * per / statistics.median(seconds), 1)


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    path = select_paths([args.path])[-1]  # the baseline comes first
    if path.model_file != "checkpoint":
        raise SystemExit(f"pipelined_throughput.py: {args.path} does not run a checkpoint")
    model = prepare_model("nafnet", "paper", workdir)
    options = {**path.options, "precision": path.precision, "cudnn_benchmark": True}
    backend = open_backend(path.backend, model.checkpoint, **options)
    if not isinstance(backend, TorchBackend):
        raise SystemExit(f"pipelined_throughput.py: {args.path} is not a torch path")
    noisy, _ = synthetic_pairs(BATCHES * args.batch, args.size)
    pixels = noisy.transpose(0, 3, 1, 2).reshape(BATCHES, args.batch, 3, args.size, args.size)
    batches = {
        "uint8": [torch.from_numpy(b.copy()).pin_memory() for b in pixels],
        "float32": [torch.from_numpy(b.astype(np.float32) / 255.0).pin_memory() for b in pixels],
    }
    reference = [backend(b.numpy()) for b in batches["float32"]]  # compiles and captures first

    x = batches["float32"][0].numpy().copy()  # pageable, as a caller's array
    end_to_end = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        backend(x)
        end_to_end.append(time.perf_counter() - t0)
    results: dict[str, object] = {
        "end_to_end": {"images_per_s": rate(args.batch, end_to_end)},
        "on_device": {"images_per_s": rate(args.batch, device_times(backend, x, args.repeats))},
    }
    expected: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "uint8": to_uint8,  # shape-blind on arrays: clip, scale, round
        "float32": lambda y: y,
    }
    for kind, host in batches.items():
        # The conversions' first run, every output kept and checked: 2 * SLOTS * BATCHES + 1
        # batches use each buffer with each host batch.
        _, kept = pipelined(backend, host, 2 * SLOTS * BATCHES + 1, keep=True)
        diff = max(
            float(
                np.abs(
                    out.numpy().astype(np.float64) - expected[kind](reference[i % BATCHES])
                ).max()
            )
            for i, out in enumerate(kept)
        )
        seconds = [pipelined(backend, host, args.batches)[0] for _ in range(args.rounds)]
        results[f"pipelined_{kind}"] = {
            "images_per_s": rate(args.batch, seconds, args.batches),
            "rounds_images_per_s": [rate(args.batch, [s], args.batches) for s in seconds],
            "max_abs_diff": diff,
        }
    on_device = results["on_device"]["images_per_s"]  # type: ignore[index]
    for row in results.values():
        row["share_of_on_device"] = round(row["images_per_s"] / on_device, 3)  # type: ignore[index]
    return {
        "machine": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__},
        "inputs": {
            k: getattr(args, k) for k in ("path", "batch", "size", "batches", "rounds", "repeats")
        },
        "model": model.label,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default="torch-bf16-fused-graphs", help="a CUDA torch bench path")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", type=int, default=100, help="batches per pipelined round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=30, help="calls for the bench's two figures")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("pipelined_throughput.py: needs a CUDA GPU")
    with tempfile.TemporaryDirectory(prefix="pipelined-") as tmp:
        report = measure(args, Path(tmp))
    for name, row in report["results"].items():  # type: ignore[union-attr]
        print(f"{name:>18}: {row}")
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
