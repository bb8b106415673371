"""What NAFNet's zero padding costs on odd-sized images, against the reflection denoise adds.

Every test image of the pipeline, cut to an odd size (377x505 by default: not multiples of 16),
is denoised whole (one tile) twice by the trained model: once with the network padding its
input with zeros itself, as NAFNet's reference code does, and once with ``denoise_image``
reflect-padding it to the network's multiple first (what ``denoise run`` does). PSNR of each
against the clean image, per image and the mean gain.

    python benchmarks/edge_padding.py [--model models/nafnet.pt] [--size 377 505]
        [--json benchmarks/results/edge_padding.json]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tqdm import tqdm

from denoise.checkpoint import checkpoint_path, load_model
from denoise.data.sidd_layout import GT_NAME, NOISY_NAME, list_instances
from denoise.fileio import read_rgb8, write_json
from denoise.infer import TorchBackend, denoise_image
from denoise.metrics import psnr
from denoise.paths import TEST_DIR


def measure(model: Path, test_root: Path, height: int, width: int) -> dict:
    """Per-image PSNR with zero and with reflection padding, and the gains' summary."""
    backend = TorchBackend(load_model(model)[0], device="cpu")
    multiple = backend.pad_multiple
    if multiple <= 1:
        raise SystemExit(f"{model}: this network pads nothing; the comparison is moot")
    rows = []
    for inst, folder in tqdm(list_instances(test_root), desc="images", unit="image"):
        noisy = read_rgb8(folder / NOISY_NAME)[:height, :width]
        clean = read_rgb8(folder / GT_NAME)[:height, :width]
        scores = {}
        for label, pad in (("zero", 1), ("reflect", multiple)):
            backend.pad_multiple = pad  # 1: tiles go as they are and the network pads them
            scores[label] = psnr(denoise_image(noisy, backend, tile=0, overlap=0), clean)
        row = {f"psnr_{label}_db": round(value, 4) for label, value in scores.items()}
        rows.append({"image": inst.name, **row})
    gains = [r["psnr_reflect_db"] - r["psnr_zero_db"] for r in rows]
    return {
        "model": str(model),
        "size": [height, width],
        "pad_multiple": multiple,
        "images": rows,
        "mean_gain_db": round(statistics.fmean(gains), 4),
        "min_gain_db": round(min(gains), 4),
        "max_gain_db": round(max(gains), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=checkpoint_path("nafnet"))
    ap.add_argument("--test", type=Path, default=TEST_DIR)
    ap.add_argument("--size", type=int, nargs=2, default=(377, 505), metavar=("H", "W"))
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/edge_padding.json"))
    args = ap.parse_args()
    report = measure(args.model, args.test, *args.size)
    write_json(args.json, report)
    print(
        f"{len(report['images'])} images at {args.size[0]}x{args.size[1]}: reflection gains "
        f"{report['mean_gain_db']:+.3f} dB on average over zero padding "
        f"({report['min_gain_db']:+.3f} to {report['max_gain_db']:+.3f}); wrote {args.json}"
    )


if __name__ == "__main__":
    main()
