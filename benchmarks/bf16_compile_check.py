"""Does torch.compile of a bf16 NAFNet compute what eager bf16 computes on this CPU?

On a 2-core Intel Xeon with AVX-512/AMX, torch 2.13's CPU inductor turned every output pixel of
the bf16 NAFNet-w32 into NaN, while eager bf16 was fine and the same code was fine on an AMD
EPYC; ``denoise bench`` caught it by its PSNR check (-10.9 dB, marked ✗). This script is the
small reproduction: it compiles each network once with inductor's defaults and once with its
CPU vector width capped at 256 bits, and compares both with eager bf16 on one 64x64 image.

    python benchmarks/bf16_compile_check.py [--json benchmarks/results/bf16_compile_check.json]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config as inductor_config

from denoise.bench.inputs import PAPER_ARCH, build_bench_model
from denoise.fileio import write_json
from denoise.flops import cpu_features, cpu_name
from denoise.params import load_params

SETTINGS: dict[str, dict[str, Any]] = {
    "inductor default": {},
    "inductor, 256-bit vectors": {"cpp.simdlen": 256},
}


def compare(config: dict[str, Any], patch: dict[str, Any], size: int = 64) -> dict[str, Any]:
    """Eager bf16 against compiled bf16 for one network and one inductor setting."""
    model = build_bench_model("nafnet", config).to(torch.bfloat16).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.inference_mode(), inductor_config.patch(patch):
        eager = model(x).float()
        torch._dynamo.reset()
        compiled = torch.compile(model)(x).float()
    bad = ~compiled.isfinite()
    return {
        "nonfinite_fraction": float(bad.float().mean()),
        "max_abs_diff": None if bad.any() else float((eager - compiled).abs().max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/bf16_compile_check.json"))
    args = ap.parse_args()
    start = time.perf_counter()
    trained = load_params()["train"]["nafnet"]["arch"]
    networks = {
        "nafnet-w32 (paper SIDD)": PAPER_ARCH["nafnet"],
        "nafnet default (params.yaml)": trained,
    }
    results = []
    for net, config in networks.items():
        for setting, patch in SETTINGS.items():
            row = {"network": net, "setting": setting, **compare(config, patch)}
            print(row, flush=True)
            results.append(row)
    report = {
        "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "input": "1x3x64x64 uniform random, bf16 weights (perturbed random init, seed 0)",
        "results": results,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
