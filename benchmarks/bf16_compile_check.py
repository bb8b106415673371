"""Does torch.compile of a bf16 NAFNet compute what eager bf16 computes on this CPU?

On a 2-core Intel Xeon with AVX-512/AMX, torch 2.13's CPU inductor turned every output pixel of
the bf16 NAFNet into NaN, while eager bf16 was fine; ``denoise bench`` caught it by its PSNR
check. The cause is GCC's SLP vectoriser at -O3 miscompiling two inlined ATen AVX-512 bf16
transposes in one kernel (:mod:`denoise.cpu_compile`). This script compares compiled with eager
bf16, on one 64x64 image, for:

- the smallest case: ``a + b + c`` with ``b`` and ``c`` channels_last (1x64x32x32);
- NAFNet-w32 (the paper's SIDD model) and the default (params.yaml) architecture, both with
  random weights;

each under inductor's defaults, with its vectors capped at 256 bits, with only GCC's SLP
vectoriser off, and with what ``TorchBackend`` uses on CPU (:func:`cpu_compile_options`).

    python benchmarks/bf16_compile_check.py [--json benchmarks/results/bf16_compile_check.json]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config as inductor_config

from denoise.bench.inputs import PAPER_ARCH, build_bench_model
from denoise.cpu_compile import (
    SLP_WORKAROUND_FLAG,
    compiled_for_cpu,
    cpu_compile_options,
    mixed_layout_case,
)
from denoise.fileio import write_json
from denoise.flops import cpu_features, cpu_name
from denoise.params import load_params

SETTINGS: dict[str, dict[str, Any]] = {
    "inductor default": {},
    "inductor, 256-bit vectors": {"cpp.simdlen": 256},
    f"inductor, {SLP_WORKAROUND_FLAG}": {"cpp.march": f"native {SLP_WORKAROUND_FLAG}"},
    "denoise's CPU options (cpu_compile_options)": {},  # filled in main(): they probe g++
}


def nafnet_case(config: dict[str, Any]) -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    model = build_bench_model("nafnet", config).to(torch.bfloat16).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    return model, (x,)


def compare(fn: Callable[..., torch.Tensor], args: tuple[Any, ...], options: dict[str, Any]):
    """Eager against compiled (with inductor ``options``) on ``args``."""
    with torch.inference_mode():
        eager = fn(*args).float()
        torch._dynamo.reset()
        compiled = compiled_for_cpu(fn, options)(*args).float()
    bad = ~compiled.isfinite()
    return {
        "nonfinite_fraction": float(bad.float().mean()),
        "max_abs_diff": float((eager - compiled)[~bad].abs().max()) if (~bad).any() else None,
    }


def gcc_version() -> str:
    try:
        out = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True)
        return out.stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/bf16_compile_check.json"))
    args = ap.parse_args()
    start = time.perf_counter()
    SETTINGS["denoise's CPU options (cpu_compile_options)"] = cpu_compile_options()
    cases = {
        "a + b + c (b, c channels_last)": mixed_layout_case(),
        "nafnet-w32 (paper SIDD)": nafnet_case(PAPER_ARCH["nafnet"]),
        "nafnet default (params.yaml)": nafnet_case(load_params()["train"]["nafnet"]["arch"]),
    }
    results = []
    for case, (fn, inputs) in cases.items():
        for setting, options in SETTINGS.items():
            row = {"case": case, "setting": setting, **compare(fn, inputs, options)}
            print(row, flush=True)
            results.append(row)
    report = {
        "machine": {"cpu": cpu_name(), "cpu_features": cpu_features(), "torch": torch.__version__,
                    "python": platform.python_version(), "compiler": gcc_version(),
                    "inductor_cpp_march": inductor_config.cpp.march},
        "input": "bf16; NAFNets: weights perturbed random init (seed 0), 1x3x64x64 uniform random",
        "results": results,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    write_json(args.json, report)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
