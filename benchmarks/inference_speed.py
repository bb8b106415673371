"""Inference speed of every backend and precision, side by side in one run, against the targets.

Runs :func:`denoise.bench.run_bench` (each path in a fresh process, one machine, one run) on
paper-size NAFNet-w32 by default, prints the markdown table, the targets and what bounds the
fastest paths (time at the measured peak vs the time measured), and writes the JSON.

Targets (issue "The `denoise run` and `denoise bench` commands ..."): the best FP32 path at
least 1.6x torch eager; a reduced-precision path at least 3x torch eager whose PSNR is within
0.1 dB of FP32 on the test images; on a CUDA machine, above 500 images/s at batch 8 (one
H100; the network alone, on a batch already on the GPU).

    python benchmarks/inference_speed.py [--size 512] [--batch 1] [--repeats 5] [--rounds 1]
        [--compile] [--model nafnet --arch paper] [--json benchmarks/results/inference_speed.json]
"""

from __future__ import annotations

import argparse
from typing import Any

from denoise.bench import run_bench
from denoise.bench.paths import PATHS, available_paths
from denoise.bench.report import FP32_AGREEMENT_DB, PSNR_TOLERANCE_DB, failed_paths, format_table
from denoise.cli import user_errors
from denoise.fileio import write_json

FP32_TARGET = 1.6
REDUCED_TARGET = 3.0
CUDA_TARGET_IMAGES_PER_S = 500  # NAFNet-w32, 512x512, batch 8, one H100


def verdict(report: dict[str, Any]) -> list[str]:
    """Lines saying whether each target is met, by which path, and what bounds it."""
    # Only paths whose output is right count (a miscompiled path can be fast and all NaN).
    rows = [r for r in report["results"] if "error" not in r and r["within_psnr_tolerance"]]
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    reduced = [r for r in rows if r["precision"] != "fp32"]
    lines = []
    for label, pool, target in (
        ("FP32", fp32, FP32_TARGET),
        (
            f"reduced precision (|ΔPSNR| <= {PSNR_TOLERANCE_DB} dB, output >= "
            f"{FP32_AGREEMENT_DB:g} dB from FP32's)",
            reduced,
            REDUCED_TARGET,
        ),
    ):
        if not pool:
            lines.append(f"- {label}: no path measured")
            continue
        best = max(pool, key=lambda r: r["ratio_vs_torch_eager"])
        met = "met" if best["ratio_vs_torch_eager"] >= target else "NOT met"
        # What bounds it: the time the counted MACs would take at the measured peak of the
        # path's precision, against the time measured (the rest is memory-bound elementwise
        # work, layout changes and framework overhead).
        at_peak_ms = best["latency_ms_median"] * best["share_of_peak"]
        lines.append(
            f"- {label}: target {target}x {met}: best {best['path']} "
            f"{best['ratio_vs_torch_eager']:.2f}x ({best['latency_ms_median']:.0f} ms/batch, "
            f"ΔPSNR {best['psnr_delta_db']:+.3f} dB); at the {best['peak_compared_with']} "
            f"peak the MACs alone would take {at_peak_ms:.0f} ms "
            f"({100 * best['share_of_peak']:.0f}% of peak reached)"
        )
    if report["machine"]["device"].startswith("cuda") and rows:
        lines.append(cuda_verdict(report, rows))
    return lines


def cuda_verdict(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The GPU throughput target, judged on the fastest right path.

    A torch path counts with the network alone on the GPU; a path that is not timed that way
    (TensorRT, onnxruntime) with its end-to-end rate, which includes the host copies.
    """

    def rate(r: dict[str, Any]) -> float:
        return r.get("images_per_s_on_device", r["images_per_s"])

    best = max(rows, key=rate)
    on_gpu = "images_per_s_on_device" in best
    inp, gpu = report["inputs"], report["machine"].get("gpu", "GPU")
    met = "met" if rate(best) > CUDA_TARGET_IMAGES_PER_S else "NOT met"
    caveat = "" if inp["batch"] == 8 and inp["size"] == 512 else " (target is for 512 px, batch 8)"
    how = (
        f"on the GPU ({best['images_per_s']:.0f} with host copies), "
        f"{100 * best['share_of_peak_on_device']:.0f}% of the {best['peak_compared_with']} peak"
        if on_gpu
        else "end to end, host copies included"
    )
    return (
        f"- GPU throughput: target > {CUDA_TARGET_IMAGES_PER_S} images/s {met}{caveat} on {gpu}: "
        f"best {best['path']} {rate(best):.0f} images/s {how}, "
        f"ΔPSNR {best['psnr_delta_db']:+.3f} dB"
    )


@user_errors
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nafnet", help="nafnet|dncnn or a .pt checkpoint")
    ap.add_argument("--arch", default="paper", help="paper (default) or checkpoint")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--rounds", type=int, default=1, help="measure every path this many times, interleaved"
    )
    ap.add_argument("--psnr-images", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also the torch.compile paths (compiling takes about a minute)",
    )
    ap.add_argument(
        "--backends",
        nargs="+",
        choices=sorted(PATHS),
        default=None,
        help="exactly these paths (default: every available one except the opt-in ones; "
        "--compile adds the compiled ones)",
    )
    ap.add_argument("--json", default="benchmarks/results/inference_speed.json")
    args = ap.parse_args()

    names = args.backends or available_paths()
    if args.compile and not args.backends:
        names += [n for n in available_paths(opt_in=True) if "compile" in n]
    report = run_bench(
        args.model,
        arch=args.arch,
        size=args.size,
        batch=args.batch,
        backends=names,
        repeats=args.repeats,
        rounds=args.rounds,
        psnr_images=args.psnr_images,
        threads=args.threads or None,
    )
    report["verdict"] = verdict(report)
    print(format_table(report))
    print("\n" + "\n".join(report["verdict"]))
    write_json(args.json, report)
    print(f"\nwrote {args.json}")
    if failed_paths(report):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
