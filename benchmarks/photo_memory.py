"""Peak memory and time of ``denoise run`` on a 12-megapixel photo, against the 4 GB target.

Builds a 4000x3000 JPEG by tiling (with mirrored copies, so no seams) a noisy test image of
the pipeline, runs ``denoise run`` on it in a child process exactly as a user would, and reads
the child's peak RSS from the kernel (``getrusage(RUSAGE_CHILDREN)``), so the figure includes
Python, torch and every tile buffer.

    python benchmarks/photo_memory.py [--model models/nafnet.pt] [--precision fp32]
        [--json benchmarks/results/photo_memory.json]
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from denoise.fileio import write_json

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/nafnet.pt", help="relative to the repository root")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument(
        "--source",
        type=Path,
        default=next(
            iter(sorted((REPO / "data" / "split" / "test").glob("*/NOISY_SRGB_010.PNG"))), None
        ),
        help="image to tile into the photo (default: the first noisy test image)",
    )
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks/results/photo_memory.json")
    args = ap.parse_args()
    if args.source is None:
        raise SystemExit("data/split/test has no images; run `make repro` first")

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo12mp.jpg"
        make_photo(args.source, photo)
        cmd = [
            sys.executable, "-m", "denoise", "run", str(photo), "--model", str(REPO / args.model),
            "--precision", args.precision, "--tile", str(args.tile),
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"denoise run failed ({proc.returncode}): {proc.stderr.strip()}")
        out = Path(tmp) / "photo12mp_denoised.jpg"
        shape = cv2.imread(str(out)).shape
    # ru_maxrss is in KiB on Linux: the largest RSS of any waited-for child.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "photo": f"{WIDTH}x{HEIGHT} JPEG ({WIDTH * HEIGHT / 1e6:.0f} MP)",
        "output_shape": list(shape),
        "model": args.model,
        "precision": args.precision,
        "tile": args.tile,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "target_mb": TARGET_MB,
        "target_met": peak_mb < TARGET_MB,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": sys.version.split()[0],
        },
    }
    verdict = "met" if result["target_met"] else "NOT met"
    print(
        f"denoise run on a {result['photo']}: {wall:.1f} s, peak RSS {peak_mb:.0f} MB "
        f"(target < {TARGET_MB} MB: {verdict})"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
