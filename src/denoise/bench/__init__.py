"""Inference speed of every backend and precision, side by side on one machine: `denoise bench`.

One run measures, for each *path* (a backend with its speed options, e.g. ``torch-bf16`` =
torch, weights and activations in bf16, channels_last):

- images/s and megapixels/s on a ``(batch, 3, size, size)`` input (median of ``repeats`` timed
  calls after warm-up; the first call, which includes any compilation, is reported apart),
- the ratio to torch eager FP32 (the baseline, always measured first). With ``rounds`` > 1
  the whole list of paths is measured that many times over, one path after another, so a
  slow spell of a shared machine falls on every path alike: the medians pool every round's
  calls, and each round's own ratio is reported too (its spread is the noise),
- the PSNR change against that baseline on test images (centre crops of ``size`` from
  ``test_dir``, by default ``data/split/test``; deterministic synthetic camera pairs when the
  default has none),
- peak resident memory: each path runs in a fresh process (multiprocessing *spawn*), so
  ``VmHWM`` is that path's own peak (libraries + model + activations), not a mix,
- the compute reached: MACs counted once by forward hooks (:func:`count_macs`), times images/s,
  as a share of the machine's peak measured in the same run (:mod:`denoise.flops`).

Paths that need CUDA (fp16, CUDA graphs, TensorRT) switch on by detection. Opt-in
(``--backends``): the compiled paths, every ``torch-bf16-cast-*`` path among them, because
compiling takes tens of seconds (minutes for ``torch-bf16-cast-autotune``); the inference form
(``*fused*``); dynamic int8 (``onnxruntime-int8-dynamic``). Torch paths run with
``cudnn_benchmark`` on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from denoise.bench.inputs import (
    build_model_files,
    calibration_batches,
    describe_error,
    prepare_model,
    psnr_pairs,
)
from denoise.bench.measurement import Job, measure, measure_isolated, merge_rounds, torch_threads
from denoise.bench.paths import BASELINE, bench_device, select_paths
from denoise.bench.report import progress_line, summarise
from denoise.checkpoint import load_model
from denoise.errors import DenoiseError
from denoise.flops import count_macs, machine_info
from denoise.model_choice import find_project
from denoise.paths import MODELS_DIR, VAL_DIR


def run_bench(
    model: str = "nafnet",
    *,
    arch: str = "checkpoint",
    size: int = 512,
    batch: int = 1,
    backends: Sequence[str] | None = None,
    repeats: int = 5,
    rounds: int = 1,
    warmup: int = 1,
    psnr_images: int = 10,
    test_dir: str | Path | None = None,
    val_dir: str | Path | None = None,
    project: str | Path | None = None,
    isolate: bool = True,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every selected path; returns ``{"machine", "model", "inputs", "results"}``.

    The pipeline's files (``models/<name>.pt`` for a ``model`` given by name, the test pairs
    for the PSNR change, the validation patches for int8 calibration where ``val_dir`` is
    None) are looked for in ``project`` (default: :func:`~denoise.model_choice.find_project`,
    as ``denoise run`` does). ``isolate`` runs each path in its own spawned process (its own
    libraries' memory, no state shared between paths); without it everything runs here, and
    each path's ``peak_rss_mb`` counts from the process's size when it started (None where
    that counter cannot be reset).
    """
    if size < 16 or batch < 1 or repeats < 1 or rounds < 1 or psnr_images < 1:
        raise DenoiseError(
            f"need size >= 16, batch, repeats, rounds and psnr images >= 1 (got size {size}, "
            f"batch {batch}, repeats {repeats}, rounds {rounds}, images {psnr_images})"
        )
    if threads is not None and threads < 0:
        raise DenoiseError(f"threads {threads} must be >= 0 (0: torch's default)")
    device = bench_device()
    paths = select_paths(backends, device)
    threads = threads or torch.get_num_threads()
    project = find_project() if project is None else Path(project)
    val_dir = project / VAL_DIR if val_dir is None else val_dir
    # Before any model is built: a mistyped --test-dir fails in seconds, not minutes.
    noisy, clean, source = psnr_pairs(test_dir, psnr_images, size, seed, project=project)
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="denoise-bench-") as tmp:
        workdir = Path(tmp)
        bench_model = prepare_model(
            model, arch, workdir, seed=seed, models_dir=project / MODELS_DIR
        )
        net, ckpt = load_model(bench_model.checkpoint)
        macs = count_macs(net, (1, 3, size, size))
        params = sum(p.numel() for p in net.parameters())
        del net
        files, build_s, errors = build_model_files(
            paths, bench_model, workdir, lambda: calibration_batches(val_dir), size, batch
        )
        noisy_chw = noisy.transpose(0, 3, 1, 2).copy()
        timing = np.repeat(noisy_chw[:1], batch, axis=0)
        machine = machine_info(device)
        by_round: dict[str, list[dict[str, Any]]] = {p.name: [] for p in paths}
        # The bar only on a terminal (``disable=None``); the per-path lines in logs too.
        bar = None if progress else True
        steps = [(r, path) for r in range(rounds) for path in paths]
        for r, path in tqdm(steps, desc="bench", unit="path", disable=bar):
            done = by_round[path.name]
            if done and "error" in done[-1]:
                continue  # failed in an earlier round: reported once
            if path.model_file in errors:
                done.append({"error": errors[path.model_file]})
                continue
            job = Job(
                path, files[path.model_file], timing, noisy_chw, batch, repeats, warmup, threads
            )
            try:
                done.append((measure_isolated if isolate else measure)(job))
            except Exception as e:  # also a crashed child process (BrokenProcessPool)
                done.append({"error": describe_error(e)})
            if progress:  # a run cut short (a device call's time limit) keeps these lines
                name = path.name if rounds == 1 else f"{path.name} (round {r + 1})"
                tqdm.write(progress_line(name, done[-1], batch))
            if path.name == BASELINE and "error" in done[-1]:
                raise DenoiseError(
                    f"torch eager FP32, the baseline every ratio needs, failed: {done[-1]['error']}"
                )
    runs = {name: merge_rounds(measured) for name, measured in by_round.items()}
    results = summarise(paths, runs, clean, macs, size, batch, machine, build_s)
    return {
        "machine": machine,
        "model": {
            "name": ckpt["model"],
            "config": ckpt["config"],
            "source": bench_model.label,
            "parameters": params,
            "gmacs_per_image": round(macs / 1e9, 3),
        },
        "inputs": {
            "size": size,
            "batch": batch,
            "repeats": repeats,
            "rounds": rounds,
            "warmup": warmup,
            "psnr_images": source,
            "isolated_processes": isolate,
        },
        "results": results,
    }
