"""Peak memory and time of ``denoise run`` on a 12-megapixel photo, against the 4 GB target.

Builds a 4000x3000 JPEG by tiling (with mirrored copies, so no seams) a noisy test image of
the pipeline, runs ``python -m denoise run`` on it in a child process as a user would, and
reads the child's own peak RSS (its VmHWM, which it reports as it exits), so the figure
includes Python, torch and every tile buffer (not the C++ compilers that ``--compile`` starts,
which run as processes of their own). Each ``--options`` value is one more run of the same
photos with those ``denoise run`` options, one after another in this one invocation, its
speed-up over the first recorded; ``--photos N`` has each run clean N copies (a compiled model
pays its compile once). Each run gets an empty inductor cache, as a first ``--compile`` does:

    python benchmarks/photo_memory.py [--model models/nafnet.pt] [--photos 1]
        [--options "" --options "--precision bf16 --channels-last --compile"]
        [--json benchmarks/results/photo_memory.json]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from denoise.checkpoint import checkpoint_path
from denoise.data.sidd_layout import NOISY_NAME
from denoise.fileio import write_json
from denoise.flops import cpu_name
from denoise.paths import TEST_DIR

REPO = Path(__file__).resolve().parents[1]
TARGET_MB = 4096
WIDTH, HEIGHT = 4000, 3000


def make_photo(source: Path, out: Path) -> None:
    """Write a WIDTHxHEIGHT JPEG made of mirrored copies of ``source``."""
    img = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"{source}: cannot read the source image; run `make repro` first")
    row = np.concatenate([img, img[:, ::-1]], axis=1)
    block = np.concatenate([row, row[::-1]], axis=0)
    reps = (-(-HEIGHT // block.shape[0]), -(-WIDTH // block.shape[1]), 1)
    photo = np.ascontiguousarray(np.tile(block, reps)[:HEIGHT, :WIDTH])
    if not cv2.imwrite(str(out), photo, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise SystemExit(f"{out}: could not write the test photo")


# Runs a module as ``python -m`` would, then reports the process's own peak RSS (VmHWM) on
# stderr. ``wait4``/``getrusage`` cannot give it: a child's ru_maxrss starts at its parent's
# resident size at fork time (Linux keeps it across exec).
_REPORT_PEAK = """
import atexit, runpy, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("\\nVmHWM_KB " + line.split()[1] + "\\n")
atexit.register(_peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_module(
    module: str, args: list[str], env: dict[str, str] | None = None
) -> tuple[float, float]:
    """``python -m module *args``: its wall time (s) and its own peak RSS (MB)."""
    cmd = [sys.executable, "-c", _REPORT_PEAK, module, *args]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode:
        message = stderr.split("\nVmHWM_KB")[0].strip()
        raise SystemExit(f"python -m {module} failed ({proc.returncode}): {message}")
    peaks = [line.split()[1] for line in stderr.splitlines() if line.startswith("VmHWM_KB ")]
    if not peaks:
        raise SystemExit(f"{module}: no peak memory reported (no /proc/self/status?)")
    return wall, int(peaks[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default=str(checkpoint_path("nafnet")), help="relative to the repository root"
    )
    ap.add_argument(
        "--options",
        action="append",
        help='denoise run options of one run, e.g. "--precision bf16" (repeatable; '
        "default: one run with none); ratios are against the first",
    )
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument(
        "--photos", type=int, default=1, help="copies of the photo one denoise run cleans"
    )
    ap.add_argument(
        "--source",
        type=Path,
        default=next(iter(sorted((REPO / TEST_DIR).glob(f"*/{NOISY_NAME}"))), None),
        help="image to tile into the photo (default: the first noisy test image)",
    )
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/photo_memory.json")
    args = ap.parse_args()
    if args.source is None:
        raise SystemExit(f"{TEST_DIR} has no images; run `make repro` first")

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photo(args.source, photos / "photo12mp_1.jpg")
        for i in range(2, args.photos + 1):
            shutil.copyfile(photos / "photo12mp_1.jpg", photos / f"photo12mp_{i}.jpg")
        for i, options in enumerate(args.options or [""]):
            out_dir = Path(tmp) / f"out{i}"
            run = [
                "run", str(photos), "--model", str(REPO / args.model), "--tile", str(args.tile),
                "-o", str(out_dir), *shlex.split(options),
            ]  # fmt: skip
            cache = {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / f"inductor-cache{i}")}
            wall, peak_mb = run_module("denoise", run, {**os.environ, **cache})
            output = cv2.imread(str(out_dir / f"photo12mp_{args.photos}_denoised.jpg"))
            if output is None:
                raise SystemExit(f"denoise run {options}: no readable output in {out_dir}")
            runs.append({
                "options": options,
                "output_shape": list(output.shape),
                "wall_s": round(wall, 2),
                "speedup_vs_first": round(runs[0]["wall_s"] / wall, 2) if runs else 1.0,
                "peak_rss_mb": round(peak_mb, 1),
                "target_met": peak_mb < TARGET_MB,
            })  # fmt: skip
            print(
                f"denoise run {options or '(defaults)'}: {wall:.1f} s, peak RSS {peak_mb:.0f} MB "
                f"(target < {TARGET_MB} MB: {'met' if peak_mb < TARGET_MB else 'NOT met'})",
                flush=True,
            )
    result = {
        "photo": f"{WIDTH}x{HEIGHT} JPEG ({WIDTH * HEIGHT / 1e6:.0f} MP)",
        "photos_per_run": args.photos,
        "model": args.model,
        "tile": args.tile,
        "target_mb": TARGET_MB,
        "runs": runs,
        "machine": {"cpu": cpu_name(), "python": sys.version.split()[0]},
    }
    write_json(args.json, result)


if __name__ == "__main__":
    main()
