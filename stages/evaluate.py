"""Stage evaluate: score the trained models and two baselines on the whole test images.

data/split/{test,val} + models/<name>.pt -> metrics/evaluate.json (PSNR/SSIM means and
breakdowns), metrics/evaluate_speed.json (seconds per megapixel), plots/evaluate/.
"""

from __future__ import annotations

from pathlib import Path

from common import load_params, run_stage

from denoise.checkpoint import checkpoint_path
from denoise.evaluate import EvalParams, evaluate
from denoise.paths import SPLIT_DIR

METRICS = Path("metrics/evaluate.json")
SPEED = Path("metrics/evaluate_speed.json")
PLOTS = Path("plots/evaluate")


def main() -> None:
    params = EvalParams.from_dict(load_params()["evaluate"])
    summary = evaluate(
        SPLIT_DIR,
        {name: checkpoint_path(name) for name in params.models},
        params,
        metrics_path=METRICS,
        speed_path=SPEED,
        plots_dir=PLOTS,
    )
    nlm = summary["nlm"]
    print(
        f"NLM tuned on {nlm['val_patches']} val patches: h={nlm['h']} "
        f"h_color={nlm['h_color']} ({nlm['val_psnr']} dB)"
    )
    for method, entry in summary["methods"].items():
        print(f"{method:>8}: {entry['psnr']} dB  SSIM {entry['ssim']}")


if __name__ == "__main__":
    run_stage(main)
