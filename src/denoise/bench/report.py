"""From raw measurements to the report: ratios, PSNR changes, shares of peak, the table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from denoise.bench.paths import BASELINE, BenchPath
from denoise.metrics import psnr

PSNR_TOLERANCE_DB = 0.1  # a reduced-precision path is kept only within this of FP32
# ...and only if its output is also this close to FP32's own output (PSNR of one against the
# other). The 0.1 dB test alone is weak when the network's error is large: with random weights
# it scores about 18 dB against the clean images, and an error 34 dB below FP32's output would
# still move that by less than 0.1 dB. Correct bf16 and int8 paths measured 50-60 dB.
FP32_AGREEMENT_DB = 45.0
# The measured keys of the JSON schema: a path that failed has them too, as null.
MEASURED_KEYS = ("images_per_s", "ratio_vs_torch_eager", "psnr_delta_db", "peak_rss_mb")


def _peak_for(precision: str, machine: dict[str, Any]) -> tuple[float, str]:
    """The measured peak of the path's precision (FP32's when that one was not measured)."""
    key = {"bf16": "peak_gflops_bf16", "fp16": "peak_gflops_fp16", "int8": "peak_gops_int8"}.get(
        precision
    )
    if key and key in machine:
        return machine[key], precision
    return machine["peak_gflops_fp32"], "fp32"


def _images_per_s(times: Sequence[float], batch: int) -> float:
    """Throughput from the median of a path's timed calls of ``batch`` images."""
    return batch / statistics.median(times)


def progress_line(name: str, run: dict[str, Any], batch: int) -> str:
    """One path's speed as soon as it is measured (the table waits for every path)."""
    if "error" in run:
        return f"{name}: failed: {run['error']}"
    line = f"{name}: {_images_per_s(run['times_s'], batch):.1f} images/s"
    if run.get("device_times_s"):
        line += f", {_images_per_s(run['device_times_s'], batch):.1f} on the GPU"
    return f"{line} (first call {run['first_call_s']:.1f} s)"


def summarise(
    paths: Sequence[BenchPath],
    runs: dict[str, dict[str, Any]],
    clean: np.ndarray,
    macs: int,
    size: int,
    batch: int,
    machine: dict[str, Any],
    build_s: dict[str, float],
) -> list[dict[str, Any]]:
    base = runs[BASELINE]
    base_out = base["outputs"]
    base_psnr = statistics.fmean(psnr(o, c) for o, c in zip(base_out, clean, strict=True))
    base_rate = _images_per_s(base["times_s"], batch)
    base_device_times = base.get("device_times_s")
    base_device_rate = _images_per_s(base_device_times, batch) if base_device_times else None
    results = []
    for path in paths:
        run = runs[path.name]
        if "error" in run:
            results.append(
                {
                    "backend": path.backend,
                    "path": path.name,
                    "precision": path.precision,
                    "description": path.description,
                    # The schema's keys on every row, so readers of the JSON need no guard.
                    **dict.fromkeys(MEASURED_KEYS),
                    "error": run["error"],
                }
            )
            continue
        median = statistics.median(run["times_s"])
        rate = batch / median
        out_psnr = statistics.fmean(psnr(o, c) for o, c in zip(run["outputs"], clean, strict=True))
        # Pooled over the images: one image identical to FP32's must not make the mean inf.
        vs_fp32 = psnr(np.stack(run["outputs"]), np.stack(base_out))
        gflops = 2.0 * macs * rate / 1e9
        peak, peak_kind = _peak_for(path.precision, machine)
        delta = out_psnr - base_psnr
        row = {
            "backend": path.backend,
            "path": path.name,
            "precision": path.precision,
            "description": path.description,
            "images_per_s": round(rate, 3),
            "megapixels_per_s": round(rate * size * size / 1e6, 3),
            "latency_ms_median": round(1000 * median, 2),
            "latency_ms_min": round(1000 * min(run["times_s"]), 2),
            "ratio_vs_torch_eager": round(rate / base_rate, 3),
            "psnr_db": round(out_psnr, 3),
            "psnr_delta_db": round(delta, 3),
            "psnr_vs_fp32_output_db": None if vs_fp32 == float("inf") else round(vs_fp32, 2),
            "nonfinite_fraction": run["nonfinite_fraction"],  # unrounded: one NaN counts
            "within_psnr_tolerance": abs(delta) <= PSNR_TOLERANCE_DB
            and vs_fp32 >= FP32_AGREEMENT_DB
            and not run["nonfinite_fraction"],
            "peak_rss_mb": None if run["peak_rss_mb"] is None else round(run["peak_rss_mb"], 1),
            "gflops": round(gflops, 2),
            "share_of_peak": round(gflops / peak, 4),
            "peak_compared_with": peak_kind,
            "open_s": round(run["open_s"], 2),
            "first_call_s": round(run["first_call_s"], 2),
        }
        if "round_medians_s" in run:  # each round's own ratio: their spread is the noise
            row["ratio_vs_torch_eager_by_round"] = [
                round(b / m, 3)
                for b, m in zip(base["round_medians_s"], run["round_medians_s"], strict=True)
            ]
        if path.model_file in build_s:
            row["build_s"] = round(build_s[path.model_file], 2)
        if "device_times_s" in run:
            on_device = statistics.median(run["device_times_s"])
            row["images_per_s_on_device"] = round(batch / on_device, 3)
            if base_device_rate:
                row["ratio_vs_torch_eager_on_device"] = round(
                    batch / on_device / base_device_rate, 3
                )
            row["latency_ms_on_device"] = round(1000 * on_device, 2)
            row["share_of_peak_on_device"] = round(2.0 * macs * batch / on_device / 1e9 / peak, 4)
        if "peak_cuda_mb" in run:
            row["peak_cuda_mb"] = round(run["peak_cuda_mb"], 1)
        results.append(row)
    return results


def format_table(report: dict[str, Any]) -> str:
    """The results as a markdown table, with the machine and inputs above it."""
    m, inp, mod = report["machine"], report["inputs"], report["model"]
    measured = [r for r in report["results"] if "error" not in r]
    on_device = any("images_per_s_on_device" in r for r in measured)
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    fp16 = f"fp16 {m['peak_gflops_fp16']} GFLOP/s, " if "peak_gflops_fp16" in m else ""
    lines = [
        f"{mod['name']} ({mod['source']}; {mod['parameters']:,} parameters, "
        f"{mod['gmacs_per_image']} GMAC per {inp['size']}x{inp['size']} image)",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['device']}{gpu}; torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}",
        f"peak (best of matmul, 3x3 conv): FP32 {m['peak_gflops_fp32']} GFLOP/s, "
        f"bf16 {m['peak_gflops_bf16']} GFLOP/s, {fp16}int8 {m.get('peak_gops_int8', '-')} GOP/s",
        f"batch {inp['batch']}, median of {_calls(inp)}; PSNR on {inp['psnr_images']}",
        *(
            [
                "images/s: numpy in, numpy out (host-device copies included); on-GPU: the "
                "network alone on a batch already on the GPU"
            ]
            if on_device
            else []
        ),
        "",
        "| path | precision | images/s | MP/s | ms/batch | vs eager | PSNR dB | ΔPSNR dB "
        "| PSNR vs FP32 out | peak RSS MB | GFLOP/s | share of peak | first call s |"
        + (" on-GPU images/s |" if on_device else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if on_device else ""),
    ]
    for r in measured:
        flag = "" if r["within_psnr_tolerance"] else " ✗"
        if r.get("nonfinite_fraction"):
            share = 100 * r["nonfinite_fraction"]
            flag += f" ({share:.0f}% NaN/inf)" if share >= 1 else " (<1% NaN/inf)"
        vs = r["psnr_vs_fp32_output_db"]
        agree = "identical" if vs is None else f"{vs:.1f}"
        lines.append(
            f"| {r['path']} | {r['precision']} | {r['images_per_s']:.3f} | "
            f"{r['megapixels_per_s']:.3f} | {r['latency_ms_median']:.1f} | "
            f"{_ratio_cell(r)} | {r['psnr_db']:.2f} | "
            f"{r['psnr_delta_db']:+.3f}{flag} | {agree} | {_mb_cell(r['peak_rss_mb'])} | "
            f"{r['gflops']:.1f} | "
            f"{100 * r['share_of_peak']:.1f}% ({r['peak_compared_with']}) | "
            f"{r['first_call_s']:.2f} |" + (_on_device_cell(r) if on_device else "")
        )
    if not all(r["within_psnr_tolerance"] for r in measured):
        lines.append(
            f"\n✗: PSNR differs from FP32 by more than {PSNR_TOLERANCE_DB} dB, the output is "
            f"less than {FP32_AGREEMENT_DB:g} dB from FP32's, or it holds NaN/inf; not kept."
        )
    failed = failed_paths(report)
    if failed:
        lines += ["", *(f"failed: {r['path']}: {r['error']}" for r in failed)]
    return "\n".join(lines)


def _calls(inputs: dict[str, Any]) -> str:
    rounds = inputs.get("rounds", 1)
    if rounds == 1:
        return f"{inputs['repeats']} calls"
    return (
        f"{inputs['repeats']} calls x {rounds} rounds (vs eager: pooled, then each round's range)"
    )


def _ratio_cell(row: dict[str, Any]) -> str:
    cell = f"{row['ratio_vs_torch_eager']:.2f}x"
    by_round = row.get("ratio_vs_torch_eager_by_round")
    return f"{cell} ({min(by_round):.2f}-{max(by_round):.2f})" if by_round else cell


def _mb_cell(mb: float | None) -> str:
    return "-" if mb is None else f"{mb:.0f}"


def _on_device_cell(row: dict[str, Any]) -> str:
    rate = row.get("images_per_s_on_device")
    return " - |" if rate is None else f" {rate:.1f} |"


def failed_paths(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The result rows of paths that could not be measured (each has an ``error``)."""
    return [r for r in report["results"] if "error" in r]
