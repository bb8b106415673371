"""The CUDA half of the project, checked in one call on a GPU machine.

    python benchmarks/gpu_check.py OUT_DIR [--split data/split] [--budget 520]
    python benchmarks/gpu_check.py --subset DIR   # a small copy of data/split to carry there

Steps, most important first, each in its own process with its own time limit (cut to what is
left of ``--budget``), so a step that fails or runs over keeps the others' results:

1. ``machine`` and ``versions``: nvidia-smi; torch, CUDA, cuDNN and numpy versions.
2. ``inference``: ``benchmarks/inference_speed.py`` on paper-size NAFNet-w32, 512x512, batch 8:
   torch eager FP32, channels_last, bf16 and fp16 autocast, fp16 in a CUDA graph.
3. ``train-*``: the training stage (``stages/train.py``, params.yaml's recipe with fewer
   iterations) on the GPU: NAFNet with AMP launched by torchrun, NAFNet without AMP (the same
   iterations, for the PSNR and speed comparison), DnCNN with AMP. ``train.json`` holds each
   run's validation PSNR curve, best PSNR and iterations/s.
4. ``compile-fp16``: torch.compile reduce-overhead (inductor kernels in CUDA graphs) of fp16.
5. ``throughput``: ``benchmarks/train_throughput.py`` (samples/s and data wait, AMP on).
6. ``compile``: torch.compile of the bf16 and FP32 paths.
7. ``cast``: the model cast to bf16 (no autocast), compiled by default and with
   reduce-overhead, beside the compiled bf16 autocast path.
8. ``autotune``: that cast model under inductor's max-autotune, 1x1 convolutions as matmuls.
9. ``kernel``: the inference form's Triton kernel's speed per level, both its forms and the
   autotuned kernel the network calls (``dwconv_gate_speed.py``), then the inference form's
   CUDA tests (``tests/test_fused_nafnet.py -k on_cuda``; CI runs the others).
10. ``fused``: NAFNet's inference form (``denoise.fused.nafnet``), eager, compiled and in
   CUDA graphs beside the compiled cast model, then ``gpu_profile.py`` of the compiled
   inference form. With ``kernel``, the order is: kernel speeds, the network's (they say
   whether tuning won), the CUDA tests, the profile.
11. ``shift``: the inference form with the depthwise convolution as nine shifted taps
   (fused with the gate by inductor), compiled and in CUDA graphs, beside the compiled cast
   model; then its profile.
12. ``pixelwise``: the inference form with the per-pixel kernels
   (:mod:`denoise.fused.pixelwise`) against the same without them, both in CUDA graphs (the
   network's speed, first: it is the verdict); the CUDA tests of the inference form and the
   per-pixel kernels; the kernels per level (``pixelwise_speed.py``); the profile of the
   compiled inference form.
13. ``pipelined``: ``pipelined_throughput.py``: the fastest path with the host copies on
   streams of their own, overlapped with the network, beside the bench's end-to-end and
   on-GPU figures.

Steps 1-6 fill one device call's budget, so each later step is for a call of its own: a cold
H100 took 74-80 s per compiled path, and max-autotune was still compiling after 283 s::

    python benchmarks/gpu_check.py OUT_DIR --steps versions cast --budget 560
    python benchmarks/gpu_check.py OUT_DIR --steps autotune --budget 560
    python benchmarks/gpu_check.py OUT_DIR --steps shift --budget 440
    python benchmarks/gpu_check.py OUT_DIR --steps kernel fused --budget 560
    python benchmarks/gpu_check.py OUT_DIR --steps pixelwise --budget 560
    python benchmarks/gpu_check.py OUT_DIR --steps pipelined --budget 240

Everything lands in OUT_DIR: ``gpu_check.log`` (all output) and one JSON per step. Nothing here
needs a GPU to run: on a CPU machine the CUDA-only paths are left out (a dry run). Beside the
GPU machine's own torch it needs the project's dependencies (params.yaml is read with
ruamel.yaml, which the H100 machines' Python lacked: the pure-Python package was copied from
``.venv`` and put on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from denoise.bench.paths import available_paths  # noqa: E402
from denoise.data.patch_store import read_patch_store, write_patch_store  # noqa: E402
from denoise.params import load_params  # noqa: E402
from denoise.paths import DVCLIVE_DIR, MODELS_DIR, PARAMS_FILE, SPLIT_DIR  # noqa: E402

EAGER_PATHS = ["torch", "torch-cl", "torch-bf16", "torch-fp16", "torch-fp16-cudagraph"]
COMPILE_PATHS = ["torch-fp16-compile", "torch-bf16-compile", "torch-compile"]
# torch-bf16-compile again (it is in COMPILE_PATHS): cast against autocast in one process.
CAST_PATHS = ["torch-bf16-compile", "torch-bf16-cast-compile", "torch-bf16-cast-graphs"]
AUTOTUNE_PATHS = ["torch-bf16-cast-autotune"]
# NAFNet's inference form beside the best earlier path (the compiled cast model).
FUSED_PATHS = [
    "torch-bf16-cast-compile",
    "torch-bf16-fused",
    "torch-bf16-fused-plain-compile",
    "torch-bf16-fused-compile",
    "torch-bf16-fused-graphs",
]
# The inference form with and without the per-pixel kernels, the fastest form first.
PIXELWISE_PATHS = ["torch-bf16-fused-graphs", "torch-bf16-fused-dwconv-graphs"]
SHIFT_PATHS = [
    "torch-bf16-fused-shift-compile",
    "torch-bf16-cast-compile",
    "torch-bf16-fused-shift-graphs",
]


class Runner:
    """Runs the steps one after another inside a total time budget, logging everything."""

    def __init__(self, out: Path, budget_s: float, steps: set[str] | None = None) -> None:
        self.steps = steps
        self.log = (out / "gpu_check.log").open("a")
        self.deadline = time.monotonic() + budget_s
        self.summary: list[str] = []

    def wants(self, name: str) -> bool:
        """Whether step ``name`` (``train-nafnet-fp32`` belongs to ``train``) was asked for."""
        return self.steps is None or name.split("-")[0] in self.steps

    def run(self, name: str, cmd: list[str], limit_s: float, cwd: Path = REPO) -> str | None:
        """Run ``cmd``; its output (also appended to the log), or None if it failed."""
        if not self.wants(name):
            return None
        left = self.deadline - time.monotonic()
        if left < 20:
            self.summary.append(f"{name}: not run ({left:.0f} s of the budget left)")
            return None
        limit = min(limit_s, left)
        t0 = time.monotonic()
        try:
            rc, output = _run_in_own_group(cmd, cwd, limit)
        except OSError as e:  # the program is missing (nvidia-smi on a CPU machine)
            rc, output = "not started", f"{e}\n"
        self.log.write(f"\n== {name} (limit {limit:.0f} s): {' '.join(cmd)}\n{output}")
        self.log.write(f"== {name}: rc {rc}\n")
        self.log.flush()
        self.summary.append(f"{name}: rc {rc}, {time.monotonic() - t0:.0f} s")
        return output if rc == 0 else None


def _run_in_own_group(cmd: list[str], cwd: Path, limit: float) -> tuple[int | str, str]:
    """``(return code or "timeout", output)``. On a timeout the whole process group is killed:
    the bench's spawned measuring processes would otherwise keep the GPU busy for the next
    step. (torchrun starts its workers in sessions of their own; a timed-out training step
    can leave those running.)"""
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=limit)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return "timeout", output


def make_subset(src: Path, dst: Path, train: int = 48, val: int = 16) -> None:
    """A small copy of a data/split folder: ``train``/``val`` patches evenly spaced, all test
    images. The real patch store is hundreds of MB; a device call carries 64 MiB."""
    kept = {}
    for split, count in (("train", train), ("val", val)):
        noisy, clean = read_patch_store(src / split)
        idx = np.linspace(0, len(noisy) - 1, min(count, len(noisy))).round().astype(int)
        write_patch_store(dst / split, np.asarray(noisy[idx]), np.asarray(clean[idx]))
        kept[split] = len(idx)
    shutil.copytree(src / "test", dst / "test")
    print(f"wrote {dst}: {kept['train']} train and {kept['val']} val patches, the test images")


def train_workdir(
    root: Path, split: Path, label: str, model: str, overrides: dict[str, object]
) -> Path:
    """A project folder for one training run: params.yaml with ``overrides`` under
    ``train.<model>`` (``amp`` and ``device`` under ``train``), data/split linked to ``split``."""
    work = root / label
    (work / "data").mkdir(parents=True)
    (work / SPLIT_DIR).symlink_to(split)
    params = dict(load_params(REPO / PARAMS_FILE))  # exponent floats stay floats
    for key, value in overrides.items():
        section = params["train"] if key in ("amp", "device") else params["train"][model]
        section[key] = value
    (work / PARAMS_FILE).write_text(yaml.safe_dump(params))
    return work


def read_run(work: Path, model: str) -> dict[str, object]:
    """Validation PSNR curve and DVCLive metrics (best PSNR/SSIM) of a training run in ``work``."""
    live = work / DVCLIVE_DIR / model
    curve_file = live / "plots" / "metrics" / "val" / "psnr.tsv"
    if not curve_file.is_file():
        return {"error": f"no {curve_file.relative_to(work)}"}
    with curve_file.open() as f:
        curve = {
            int(r["step"]): round(float(r["psnr"]), 3) for r in csv.DictReader(f, delimiter="\t")
        }
    metrics = json.loads((live / "metrics.json").read_text())
    return {
        "val_psnr_by_iteration": curve,
        "metrics": metrics,
        "model_written": (work / MODELS_DIR / f"{model}.pt").is_file(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--split", type=Path, default=REPO / SPLIT_DIR)
    ap.add_argument("--subset", type=Path, help="write a small copy of --split here and stop")
    ap.add_argument("--budget", type=float, default=520.0, help="seconds for all steps")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument(
        "--steps",
        nargs="+",
        choices=[
            "machine",
            "versions",
            "inference",
            "train",
            "compile",
            "throughput",
            "cast",
            "autotune",
            "kernel",
            "fused",
            "shift",
            "pixelwise",
            "pipelined",
        ],
        help="only these steps (default: all)",
    )
    ap.add_argument("--iters", type=int, default=1000, help="training iterations per run")
    args = ap.parse_args()
    if args.subset:
        make_subset(args.split, args.subset)
        return
    if args.out is None:
        ap.error("OUT_DIR is required (or --subset DIR)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    split = args.split.resolve()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    )
    os.environ["PYTHONUNBUFFERED"] = "1"
    # The log then says which form and blocks the depthwise kernel's autotuner chose per shape.
    os.environ["TRITON_PRINT_AUTOTUNING"] = "1"
    runner = Runner(out, args.budget, set(args.steps) if args.steps else None)
    py = sys.executable

    versions = (
        "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, "
        "'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__)"
    )
    runner.run("machine", ["nvidia-smi"], 30)
    runner.run("versions", [py, "-c", versions], 60)

    bench = [
        py,
        "benchmarks/inference_speed.py",
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
    ]
    possible = set(available_paths(opt_in=True))
    eager = [p for p in EAGER_PATHS if p in possible]
    runner.run(
        "inference", [*bench, "--backends", *eager, "--json", str(out / "inference_gpu.json")], 180
    )

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        common = {
            "iters": args.iters,
            "val_every": max(1, args.iters // 4),
            "checkpoint_every": args.iters,
        }
        torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        runs = [  # label, model, AMP, launcher
            ("nafnet-amp-torchrun", "nafnet", True, torchrun),
            ("nafnet-fp32", "nafnet", False, [py]),
            ("dncnn-amp", "dncnn", True, [py]),
        ]
        results = {}
        for label, model, amp, launcher in runs:
            work = train_workdir(root, split, label, model, {**common, "amp": amp})
            t0 = time.monotonic()
            stage = [*launcher, str(REPO / "stages" / "train.py"), model]
            output = runner.run(f"train-{label}", stage, 150, cwd=work)
            speed = re.search(r"([0-9.]+) it/s", output or "")
            results[label] = {
                "ok": output is not None,
                "iterations_per_s": float(speed.group(1)) if speed else None,
                "amp": amp,
                "wall_s": round(time.monotonic() - t0, 1),
                **read_run(work, model),
            }
        if runner.wants("train"):
            (out / "train.json").write_text(
                json.dumps({"iters": args.iters, "runs": results}, indent=2)
            )

    throughput = [
        py,
        "benchmarks/train_throughput.py",
        "--iters",
        "20",
        "--paper-batch",
        "16",
        "--data",
        str(split / "train"),
        "--json",
        str(out / "train_throughput_gpu.json"),
    ]

    def compile_step(label: str, paths: list[str], limit: float) -> None:
        chosen = [p for p in paths if p in possible]
        if chosen:
            json_out = str(out / f"inference_gpu_{label.replace('-', '_')}.json")
            runner.run(label, [*bench, "--backends", "torch", *chosen, "--json", json_out], limit)

    # The fp16 CUDA-graph compile first and alone: each run writes its JSON only at its end.
    compile_step("compile-fp16", COMPILE_PATHS[:1], 180)
    runner.run("throughput", throughput, 90)
    compile_step("compile", COMPILE_PATHS[1:], 240)
    compile_step("cast", CAST_PATHS, 360)
    compile_step("autotune", AUTOTUNE_PATHS, 540)
    tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fused_nafnet.py"]
    tests += ["-k", "on_cuda"]
    kernel = [py, "benchmarks/dwconv_gate_speed.py", "--json", str(out / "dwconv_gate_speed.json")]
    profile = [py, "benchmarks/gpu_profile.py", "--top", "20", "--paths"]

    runner.run("kernel-speed", kernel, 180)
    compile_step("fused", FUSED_PATHS, 360)
    runner.run("kernel-tests", tests, 240)
    fused_profile = str(out / "gpu_profile_fused.json")
    fused_profile_args = [*profile, "torch-bf16-fused-compile", "--json", fused_profile]
    runner.run("fused-profile", fused_profile_args, 240)

    compile_step("shift", SHIFT_PATHS, 300)
    shift_profile = str(out / "gpu_profile_shift.json")
    runner.run("shift-profile", [*profile, SHIFT_PATHS[0], "--json", shift_profile], 150)

    # The network first (the verdict; cold, each graph path compiles for about 75 s, and the
    # kernels' autotuners time their candidates at each shape), then the kernels' CUDA tests,
    # the per-level times and the profile, within 560 s.
    compile_step("pixelwise", PIXELWISE_PATHS, 300)
    pixelwise_tests = [*tests[:-1], "pixelwise_kernels_on_cuda or fused_nafnet_on_cuda or autocast"]
    runner.run("pixelwise-tests", pixelwise_tests, 110)
    speed_json = str(out / "pixelwise_speed.json")
    runner.run("pixelwise-speed", [py, "benchmarks/pixelwise_speed.py", "--json", speed_json], 120)
    pixelwise_profile = [
        "torch-bf16-fused-compile",
        "--json",
        str(out / "gpu_profile_pixelwise.json"),
    ]
    runner.run("pixelwise-profile", [*profile, *pixelwise_profile], 70)

    # Cold, the path compiles for about 65 s; the three forms then take seconds.
    pipelined = [py, "benchmarks/pipelined_throughput.py", *bench[2:]]  # --size, --batch, ...
    runner.run("pipelined", [*pipelined, "--json", str(out / "pipelined_throughput.json")], 220)

    print("\n".join(runner.summary))
    for path in sorted(out.glob("inference_gpu*.json")):
        print(path.name, *json.loads(path.read_text()).get("verdict", []), sep="\n")


if __name__ == "__main__":
    main()
