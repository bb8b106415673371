"""The triton-smoke stage: serve the exported models, compare them with onnxruntime, time them."""

from __future__ import annotations

import contextlib
import importlib.metadata
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoise.data.pairs import read_crops
from denoise.errors import DenoiseError
from denoise.fileio import write_json
from denoise.infer import OnnxRuntimeBackend
from denoise.params import checked_section
from denoise.triton.client import TritonBackend
from denoise.triton.repository import PYTHON_MODEL, TRT_MODEL, reference_onnx
from denoise.triton.server import TritonServer, port_problems


@dataclass(frozen=True)
class SmokeSettings:
    """The ``triton`` section of params.yaml."""

    binary: str | None  # empty or null: tritonserver on PATH, else the bundled one
    models: tuple[str, ...]
    http_port: int
    grpc_port: int
    startup_timeout_s: float
    images: int
    crop: int
    repeats: int
    warmup: int
    tolerance: float
    clients: int  # concurrent HTTP clients for the dynamic-batching throughput

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> SmokeSettings:
        s = checked_section(cls, section, "triton")
        settings = cls(**s)
        problems = port_problems(settings.http_port, settings.grpc_port) + [
            msg
            for ok, msg in (
                (
                    min(settings.images, settings.repeats, settings.clients) >= 1,
                    "images, repeats and clients must be >= 1",
                ),
                (
                    min(settings.warmup, settings.tolerance, settings.crop) >= 0,
                    "warmup, tolerance and crop must be >= 0",
                ),
                (bool(settings.models), "models must name at least one model"),
                (settings.startup_timeout_s > 0, "startup_timeout_s must be > 0"),
            )
            if not ok
        ]
        if problems:
            raise DenoiseError(f"params.yaml triton: {'; '.join(problems)}")
        return settings


def latency_ms(times: list[float]) -> dict[str, float]:
    """Median and 95th percentile of request times (given in seconds), in ms, under the keys
    that both deploy stages (``triton-smoke``, ``build-trt``) report."""
    ms = np.asarray(times) * 1000.0
    return {
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p95_ms": float(np.percentile(ms, 95)),
    }


def _measure(
    backend: TritonBackend, batches: list[np.ndarray], *, repeats: int, warmup: int, desc: str
) -> tuple[list[float], list[np.ndarray]]:
    """Per-request seconds over ``repeats`` passes, and the outputs of the first pass."""
    from tqdm import tqdm

    times, outs = [], []
    try:
        for b in batches[:1] * warmup:
            backend(b)
        for i in tqdm(range(len(batches) * max(1, repeats)), desc=desc, leave=False):
            t0 = time.perf_counter()
            y = backend(batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
            if i < len(batches):
                outs.append(y)
    finally:
        backend.close()
    return times, outs


def _measure_concurrent(
    url: str, model: str, batches: list[np.ndarray], clients: int
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """``clients`` HTTP clients, released together, each sending every batch once: the
    throughput, and the images per model run the server counted meanwhile (above 1 where
    dynamic batching joined waiting requests). Returns that and each client's outputs."""
    import concurrent.futures
    import threading

    start = threading.Barrier(clients, timeout=60)
    spans: list[tuple[float, float]] = []

    def send(_: int) -> list[np.ndarray]:
        try:  # a client in its own thread: tritonclient's HTTP one stays in the one it began in
            backend = TritonBackend(url, "http", model)
        except BaseException:
            start.abort()  # the others stop waiting
            raise
        with contextlib.closing(backend):
            start.wait()
            t0 = time.perf_counter()
            outs = [backend(b) for b in batches]
            spans.append((t0, time.perf_counter()))
        return outs

    images = clients * sum(len(b) for b in batches)
    with contextlib.closing(TritonBackend(url, "http", model)) as stats:
        before = stats.counts()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(send, k) for k in range(clients)]
            concurrent.futures.wait(futures)
        # The first real failure, not a waiting client's BrokenBarrierError that it caused.
        failures = [f.exception() for f in futures if f.exception() is not None]
        real = [e for e in failures if not isinstance(e, threading.BrokenBarrierError)]
        if failures:
            raise (real or failures)[0]
        outs = [y for f in futures for y in f.result()]
        runs = stats.counts(at_least=before[0] + images)[1] - before[1]
    elapsed = max(end for _, end in spans) - min(begin for begin, _ in spans)
    return {
        "clients": clients,
        "requests": clients * len(batches),
        "throughput_img_s": images / elapsed,
        "images_per_execution": images / max(runs, 1),
    }, outs


ODD_CUT = (19, 3)  # rows, columns cut off the crops of the odd-sized batch


def _odd_batch(batches: list[np.ndarray]) -> np.ndarray:
    """Two test crops as one request, cut by 19 x 3 pixels (256 px: 237 x 253, odd sizes) where
    they are larger than TensorRT's smallest profile: the served models' batch dimension and
    -1 dims, which the square crops alone leave unused."""
    pair = (batches[0], batches[min(1, len(batches) - 1)])
    h, w = (min(b.shape[axis] for b in pair) for axis in (2, 3))  # whole images differ in size
    if min(h, w) >= ODD_CUT[0] + 32:  # 32: build-trt's smallest side (params.yaml trt.min_shape)
        h, w = h - ODD_CUT[0], w - ODD_CUT[1]
    return np.concatenate([b[:, :, :h, :w] for b in pair])


def _check_difference(
    diff: float,
    model: str,
    how: str,
    settings: SmokeSettings,
    report: dict[str, Any],
    metrics_path: str | Path,
) -> None:
    """Fail (with the report so far written) where the served output is off; TensorRT's FP16
    engines are exempt, build-trt gates them on PSNR."""
    if model != TRT_MODEL and not diff <= settings.tolerance:  # not <=: a NaN fails too
        write_json(metrics_path, report)
        raise DenoiseError(
            f"{model} over {how}: served output differs from local onnxruntime by {diff:.3g} "
            f"(> triton.tolerance {settings.tolerance:g})"
        )


def smoke_test(
    repository: str | Path, test_root: str | Path, metrics_path: str | Path, settings: SmokeSettings
) -> dict[str, Any]:
    """Serve the repository with a real tritonserver and check it over HTTP and gRPC.

    Per model and protocol: max abs difference of the served output vs local onnxruntime on
    the same ONNX file, over the test crops and one batch of two odd-sized crops (above
    ``settings.tolerance`` fails, except for TensorRT engines, which are FP16: build-trt
    gates them on PSNR against onnxruntime, here it is only recorded), PSNR of the output
    and of the input vs the clean image, request latency p50/p95 and sequential throughput.
    Per model, ``settings.clients`` concurrent HTTP clients: throughput, images per model
    run (dynamic batching) and the same difference. Written to ``metrics_path``.
    """
    from denoise.metrics import psnr, to_batch, to_uint8

    pairs = read_crops(test_root, settings.images, settings.crop)
    batches = [to_batch(noisy) for _, noisy, _ in pairs]
    odd_batch = _odd_batch(batches)
    models = list(settings.models) or [PYTHON_MODEL]
    report: dict[str, Any] = {
        "images": len(pairs),
        "crop": settings.crop,
        "repeats": settings.repeats,
        "models": {},
        "concurrent": {},
    }
    psnr_in = float(np.mean([psnr(noisy, clean) for _, noisy, clean in pairs]))
    with TritonServer(
        repository,
        models,
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        binary=settings.binary or None,
        startup_timeout_s=settings.startup_timeout_s,
    ) as server:
        # The reference session starts onnxruntime's thread pool: only once the server is
        # forked, since forking a threaded process can deadlock the child.
        reference = OnnxRuntimeBackend(
            reference_onnx(repository), providers=["CPUExecutionProvider"]
        )
        local = [reference(b) for b in batches]
        local_odd = reference(odd_batch)
        report["server"] = {
            # not the bundled one's path: this checkout's, in a file every checkout compares
            "binary": (
                f"tritonserver of nvidia-pytriton {importlib.metadata.version('nvidia-pytriton')}"
                if server.binary.bundled
                else str(server.binary.path)
            ),
            "bundled": server.binary.bundled,
            "start_s": round(server.start_s or 0.0, 3),
        }
        for model in models:
            report["models"][model] = per_protocol = {}
            for protocol in ("http", "grpc"):
                url = server.http_url if protocol == "http" else server.grpc_url
                times, outs = _measure(
                    TritonBackend(url, protocol, model),
                    batches,
                    repeats=settings.repeats,
                    warmup=settings.warmup,
                    desc=f"{model} {protocol}",
                )
                with contextlib.closing(TritonBackend(url, protocol, model)) as backend:
                    compared = [*zip(outs, local, strict=True), (backend(odd_batch), local_odd)]
                # np.max, not max(): a NaN anywhere must fail the check below.
                diff = float(np.max([np.max(np.abs(y - ref)) for y, ref in compared]))
                psnr_out = float(
                    np.mean(
                        [
                            psnr(to_uint8(y[0].transpose(1, 2, 0)), clean)
                            for y, (_, _, clean) in zip(outs, pairs, strict=True)
                        ]
                    )
                )
                per_protocol[protocol] = {
                    "max_abs_diff_vs_onnxruntime": diff,
                    "psnr_out": psnr_out,
                    "psnr_in": psnr_in,
                    **latency_ms(times),
                    "throughput_img_s": len(times) / sum(times),
                }
                _check_difference(diff, model, protocol, settings, report, metrics_path)
            together, outs = _measure_concurrent(server.http_url, model, batches, settings.clients)
            diff = float(
                np.max(
                    [
                        np.max(np.abs(y - r))
                        for y, r in zip(outs, local * settings.clients, strict=True)
                    ]
                )
            )
            report["concurrent"][model] = {**together, "max_abs_diff_vs_onnxruntime": diff}
            _check_difference(diff, model, "concurrent http", settings, report, metrics_path)
    write_json(metrics_path, report)
    return report
