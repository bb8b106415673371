"""Where the GPU time of NAFNet inference goes: the top kernels of eager and compiled bf16.

    python benchmarks/gpu_profile.py [--paths torch-bf16 ...] [--size 512] [--batch 8]
                                     [--json out.json]

Profiles (torch.profiler, CUDA activity) a few forwards of paper-size NAFNet-w32 through the
``torch`` backend with the options of each ``denoise bench`` path named (by default bf16
autocast eager, its torch.compile, and the compiled model cast to bf16), and groups kernel time
by kernel name: it says whether the time is in the convolutions (tensor-core GEMMs), the
depthwise convolutions or the element-wise work. On a CPU machine it profiles CPU operators of
the paths available there instead, with inductor's generated C++ kernels named one by one
(``cpp.enable_kernel_profile``) rather than lumped into one ``CompiledFxGraph`` call.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import defaultdict
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from denoise.bench.inputs import PAPER_ARCH, build_bench_model
from denoise.bench.paths import PATHS, available_paths
from denoise.fileio import write_json
from denoise.infer import TorchBackend


def top_kernels(backend: TorchBackend, x: torch.Tensor, steps: int, top: int) -> dict[str, Any]:
    """Share of device time per kernel name over ``steps`` forwards (after a warm-up).

    ``ms_per_batch_profiled`` is the wall time per forward *with the profiler recording*, which
    slows the host side a lot (eager most): not a latency. ``kernel_ms_per_batch`` is the sum of
    the kernels' own durations.
    """
    cuda = x.device.type == "cuda"
    for _ in range(3):
        backend.forward(x)
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            backend.forward(x)
        if cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / steps
    totals: dict[str, float] = defaultdict(float)
    if cuda:  # the kernels themselves (operators would count their kernels a second time)
        for evt in prof.events():
            if evt.device_type == DeviceType.CUDA:
                totals[evt.name] += evt.time_range.elapsed_us()
    else:
        for evt in prof.key_averages():
            if evt.self_cpu_time_total > 0:
                totals[evt.key] += evt.self_cpu_time_total
    total = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {
        "ms_per_batch_profiled": round(1000 * wall, 2),
        "kernel_ms_per_batch": round(total / 1000 / steps, 2),
        "top": [
            {
                "kernel": k[:120],
                "ms_per_batch": round(v / 1000 / steps, 3),
                "share": round(v / total, 4),
            }
            for k, v in ranked
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument(
        "--paths",
        nargs="+",
        choices=sorted(n for n, p in PATHS.items() if p.backend == "torch"),
        default=["torch-bf16", "torch-bf16-compile", "torch-bf16-cast-compile"],
    )
    ap.add_argument("--json", default="benchmarks/results/gpu_profile.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    net = build_bench_model("nafnet", PAPER_ARCH["nafnet"])
    report: dict[str, Any] = {"size": args.size, "batch": args.batch}
    possible = available_paths(opt_in=True)
    for label in [n for n in args.paths if n in possible]:
        path = PATHS[label]
        backend = TorchBackend(  # a copy: casting to bf16 would change ``net`` in place
            copy.deepcopy(net), precision=path.precision, cudnn_benchmark=True, **path.options
        )
        x = backend.prepare(torch.rand(args.batch, 3, args.size, args.size).numpy())
        report[label] = res = top_kernels(backend, x, args.steps, args.top)
        print(
            f"\n{label}: kernels {res['kernel_ms_per_batch']} ms per batch "
            f"(wall {res['ms_per_batch_profiled']} ms with the profiler on)"
        )
        for row in res["top"]:
            print(f"  {100 * row['share']:5.1f}%  {row['ms_per_batch']:8.3f} ms  {row['kernel']}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
