"""Inference speed of every backend and precision, side by side on one machine: `denoise bench`.

One run measures, for each *path* (a backend with its speed options, e.g. ``torch-bf16`` =
torch, weights and activations in bf16, channels_last):

- images/s and megapixels/s on a ``(batch, 3, size, size)`` input (median of ``repeats`` timed
  calls after warm-up; the first call, which includes any compilation, is reported apart),
- the ratio to torch eager FP32 (the baseline, always measured first),
- the PSNR change against that baseline on test images (centre crops of ``size`` from
  ``data/split/test``; deterministic synthetic camera pairs when there is no test split),
- peak resident memory: each path runs in a fresh process (multiprocessing *spawn*), so
  ``ru_maxrss`` is that path's own peak (libraries + model + activations), not a mix,
- the compute reached: MACs counted once by forward hooks (:func:`count_macs`), times images/s,
  as a share of the machine's peak measured in the same run (:mod:`denoise.flops`).

Paths that need CUDA (fp16, CUDA graphs, the ``torch-bf16-cast-*`` paths, TensorRT) switch on
by detection; the compiled paths are opt-in because compiling takes tens of seconds (minutes
for ``torch-bf16-cast-autotune``). Torch paths run with ``cudnn_benchmark`` on.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from denoise.checkpoint import checkpoint_path, load_model, save_checkpoint
from denoise.errors import DenoiseError, first_line
from denoise.flops import count_macs, machine_info
from denoise.metrics import psnr, to_batch, to_uint8
from denoise.models.registry import build_model
from denoise.paths import MODELS_DIR, SPLIT_DIR, TEST_DIR
from denoise.quantize import quantize_int8

# The paper-size networks (NAFNet-w32 SIDD config; DnCNN colour, 17 layers of 64 channels).
PAPER_ARCH: dict[str, dict[str, Any]] = {
    "nafnet": {
        "img_channel": 3,
        "width": 32,
        "enc_blk_nums": [2, 2, 4, 8],
        "middle_blk_num": 12,
        "dec_blk_nums": [2, 2, 2, 2],
    },
    "dncnn": {"in_nc": 3, "out_nc": 3, "nc": 64, "nb": 17, "batch_norm": True},
}
PSNR_TOLERANCE_DB = 0.1  # a reduced-precision path is kept only within this of FP32
BASELINE = "torch"


# --- paths -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPath:
    """One way of running the model: a backend of :mod:`denoise.infer` and its options.

    ``model_file`` says what the backend opens: the checkpoint, the FP32 ONNX export or an
    int8-quantised ONNX file (``onnx-int8-static`` / ``onnx-int8-dynamic``).
    """

    name: str
    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    model_file: str = "checkpoint"
    needs_cuda: bool = False
    cpu_only: bool = False
    opt_in: bool = False
    description: str = ""


# Inductor's max-autotune (Triton GEMM templates timed against cuBLAS, coordinate-descent
# tuning, CUDA graphs) with every 1x1 convolution lowered to a matmul, which lets the templates
# take in the element-wise work around it: NAFNet is mostly 1x1 convolutions. The other
# convolutions stay with cuDNN: on an H100 inductor's Triton candidates for the depthwise 3x3
# convolutions ran about 70x slower than cuDNN, and timing them took much of a compile that
# was still running after 283 s.
AUTOTUNE_OPTIONS: dict[str, Any] = {
    "max_autotune": True,
    "coordinate_descent_tuning": True,
    "triton.cudagraphs": True,
    "conv_1x1_as_mm": True,
    "max_autotune_conv_backends": "ATEN",
}

_PATHS = [
    BenchPath("torch", "torch", "fp32", description="eager FP32 (the baseline)"),
    BenchPath(
        "torch-cl",
        "torch",
        "fp32",
        {"channels_last": True},
        description="eager FP32, channels_last",
    ),
    BenchPath(
        "onnxruntime",
        "onnxruntime",
        "fp32",
        model_file="onnx",
        description="onnxruntime FP32, all graph optimisations",
    ),
    BenchPath(
        "torch-compile",
        "torch",
        "fp32",
        {"channels_last": True, "compile": True},
        opt_in=True,
        description="torch.compile FP32, channels_last",
    ),
    BenchPath(
        "torch-bf16",
        "torch",
        "bf16",
        {"channels_last": True},
        description="bf16 (weights cast on CPU, autocast on CUDA), channels_last",
    ),
    BenchPath(
        "torch-bf16-amp",
        "torch",
        "bf16",
        {"channels_last": True, "amp": True},
        cpu_only=True,
        description="torch.autocast bf16 (LayerNorm in FP32), channels_last",
    ),
    BenchPath(
        "torch-bf16-compile",
        "torch",
        "bf16",
        {"channels_last": True, "compile": True},
        opt_in=True,
        description="torch.compile of torch-bf16",
    ),
    BenchPath(
        "torch-bf16-amp-compile",
        "torch",
        "bf16",
        {"channels_last": True, "amp": True, "compile": True},
        cpu_only=True,
        opt_in=True,
        description="torch.compile of torch-bf16-amp (casts fused)",
    ),
    BenchPath(
        "onnxruntime-int8",
        "onnxruntime",
        "int8",
        model_file="onnx-int8-static",
        cpu_only=True,
        description="onnxruntime int8 static QDQ (calibrated convs)",
    ),
    BenchPath(
        "onnxruntime-int8-dynamic",
        "onnxruntime",
        "int8",
        model_file="onnx-int8-dynamic",
        cpu_only=True,
        opt_in=True,
        description="onnxruntime int8 dynamic (ConvInteger)",
    ),
    BenchPath(
        "torch-fp16",
        "torch",
        "fp16",
        {"channels_last": True},
        needs_cuda=True,
        description="autocast FP16, channels_last",
    ),
    BenchPath(
        "torch-fp16-cudagraph",
        "torch",
        "fp16",
        {"channels_last": True, "cuda_graph": True},
        needs_cuda=True,
        description="torch-fp16 in a CUDA graph",
    ),
    BenchPath(
        "torch-fp16-compile",
        "torch",
        "fp16",
        {"channels_last": True, "compile": "reduce-overhead"},
        needs_cuda=True,
        opt_in=True,
        description="torch.compile reduce-overhead (inductor kernels in CUDA graphs) of torch-fp16",
    ),
    # On CUDA ``torch-bf16`` is autocast: the convolutions' outputs are bf16, but LayerNorm's
    # outputs and the element-wise work after them are FP32, twice the bytes. These cast the
    # model itself to bf16 (LayerNorm still keeps its statistics in FP32 inside the kernel).
    *(
        BenchPath(
            f"torch-bf16-cast-{suffix}",
            "torch",
            "bf16",
            {"channels_last": True, "amp": False, "compile": how},
            needs_cuda=True,
            opt_in=True,
            description=description,
        )
        for suffix, how, description in (
            ("compile", True, "torch.compile of the model cast to bf16 (no autocast)"),
            ("graphs", "reduce-overhead", "torch-bf16-cast-compile in CUDA graphs"),
            ("autotune", AUTOTUNE_OPTIONS, "torch-bf16-cast-compile, max-autotune, 1x1 conv as mm"),
        )
    ),
    BenchPath(
        "tensorrt",
        "tensorrt",
        "fp16",
        model_file="trt-plan",
        needs_cuda=True,
        description="TensorRT FP16 engine (LayerNorm in FP32)",
    ),
]
PATHS: dict[str, BenchPath] = {p.name: p for p in _PATHS}


def bench_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _available(path: BenchPath, device: str) -> bool:
    if path.needs_cuda and device != "cuda":
        return False
    if path.cpu_only and device == "cuda":
        return False
    if path.backend == "tensorrt":
        from denoise.tensorrt import tensorrt_status

        return tensorrt_status()[0]
    return True


def available_paths(device: str | None = None, *, opt_in: bool = False) -> list[str]:
    """Names of the paths this machine can run (the opt-in ones too with ``opt_in``)."""
    device = device or bench_device()
    return [p.name for p in _PATHS if (opt_in or not p.opt_in) and _available(p, device)]


def select_paths(names: Sequence[str] | None, device: str | None = None) -> list[BenchPath]:
    """The paths to measure, baseline first. ``None``: every available non-opt-in path.

    An unknown name, or one this machine cannot run, is a :class:`DenoiseError`.
    """
    device = device or bench_device()
    if not names:
        chosen = [PATHS[n] for n in available_paths(device)]
    else:
        chosen = []
        for name in names:
            if name not in PATHS:
                raise DenoiseError(f"unknown bench backend {name!r}; known: {', '.join(PATHS)}")
            if not _available(PATHS[name], device):
                raise DenoiseError(
                    f"bench backend {name!r} is not available on this machine "
                    f"({device}; {PATHS[name].description})"
                )
            if PATHS[name] not in chosen:
                chosen.append(PATHS[name])
    return [PATHS[BASELINE]] + [p for p in chosen if p.name != BASELINE]


# --- the model and the images ----------------------------------------------------------------


def perturb_(model: nn.Module, scale: float = 0.02, seed: int = 0) -> nn.Module:
    """Add ``scale * N(0, 1)`` noise (seeded) to every parameter, in place.

    A freshly built NAFNet is exactly the identity (zero ``ending`` conv, ``beta = gamma = 0``):
    every precision would give the same output and PSNR deltas would mean nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def _last_conv(model: nn.Module, channels: int = 3) -> nn.Conv2d | None:
    """The convolution that runs last in a forward pass (registration order can differ)."""
    order: list[nn.Conv2d] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, channels, 16, 16))
    finally:
        for h in handles:
            h.remove()
    return order[-1] if order else None


def build_bench_model(
    name: str, config: dict[str, Any], seed: int = 0, scale: float = 0.02
) -> nn.Module:
    """Network ``name`` with ``config``: random init, deterministically perturbed.

    The last convolution gets small weights (``scale * N(0, 1)``, NAFNet's zero ``ending``
    perturbed), so a residual network changes the image moderately: DnCNN's random last
    layer would otherwise subtract garbage "noise" and PSNR would sit near 10 dB.
    """
    torch.manual_seed(seed)
    model = perturb_(build_model(name, config), scale=scale, seed=seed)
    last = _last_conv(model)
    if last is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            last.weight.copy_(scale * torch.randn(last.weight.shape, generator=gen))
    return model


def _fit(img: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to ``size x size``; reflect-pad a smaller image up to it."""
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    img = img[top : top + size, left : left + size]
    ph, pw = size - img.shape[0], size - img.shape[1]
    if ph or pw:
        reflect = img.shape[0] > ph - ph // 2 and img.shape[1] > pw - pw // 2
        img = np.pad(
            img,
            ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)),
            mode="reflect" if reflect else "edge",
        )
    return np.ascontiguousarray(img)


def synthetic_pairs(count: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` deterministic ``(noisy, clean)`` uint8 pairs from the built-in camera."""
    from denoise.data import synthetic_camera as camera

    rng = np.random.default_rng(seed)
    noisy, clean = [], []
    for i in range(count):
        inst, cam = camera.sample_instance(i, rng)
        gt, nz = camera.simulate_pair(camera.clean_image(inst.scene, size, size, rng), cam, rng)
        noisy.append(nz)
        clean.append(gt)
    return np.stack(noisy), np.stack(clean)


def psnr_pairs(
    test_dir: str | Path | None, count: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(noisy, clean, source)``: ``count`` ``size x size`` uint8 pairs, NHWC.

    Centre crops of the first ``count`` test pairs (reflect-padded where an image is smaller)
    when ``test_dir`` holds any, else synthetic camera pairs; ``source`` says which.
    """
    from denoise.evaluate import find_pairs, read_pair

    if test_dir is not None and Path(test_dir).is_dir():
        try:
            pairs = find_pairs(test_dir)[:count]
        except DenoiseError:
            pairs = []
        if pairs:
            noisy, clean = zip(*(read_pair(p) for p in pairs), strict=True)
            return (
                np.stack([_fit(n, size) for n in noisy]),
                np.stack([_fit(c, size) for c in clean]),
                f"{test_dir} ({len(pairs)} centre crops)",
            )
    noisy, clean = synthetic_pairs(count, size, seed)
    return noisy, clean, f"synthetic camera ({count} pairs, seed {seed})"


def calibration_batches(
    val_dir: str | Path | None, count: int = 8, size: int = 128
) -> list[np.ndarray]:
    """Noisy crops for int8 calibration: validation patches (never the test images)."""
    from denoise.data.patch_store import read_patch_store

    if val_dir is not None and Path(val_dir).is_dir():
        try:
            noisy, _ = read_patch_store(val_dir)
        except DenoiseError:
            noisy = None
        if noisy is not None and len(noisy):
            idx = np.linspace(0, len(noisy) - 1, min(count, len(noisy))).round().astype(int)
            crops = [_fit(np.asarray(noisy[i]), size) for i in idx]
            return [to_batch(c) for c in crops]
    noisy, _ = synthetic_pairs(count, size, seed=1)
    return [to_batch(n) for n in noisy]


# --- measuring one path ----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Everything a (possibly separate) process needs to measure one path."""

    path: BenchPath
    model_file: str
    timing_input: np.ndarray  # (batch, 3, size, size) uint8
    psnr_inputs: np.ndarray  # (count, 3, size, size) uint8
    batch: int
    repeats: int
    warmup: int
    threads: int


def measure(job: Job) -> dict[str, Any]:
    """Open the backend, time it and run it over the PSNR images; returns raw measurements."""
    from denoise.infer import open_backend

    torch.set_num_threads(job.threads)
    options = dict(job.path.options)
    if job.path.backend == "torch":
        # Every timed batch has one shape: let cuDNN pick its fastest algorithms (CUDA only).
        options |= {"precision": job.path.precision, "cudnn_benchmark": True}
    elif job.path.backend == "onnxruntime":
        options["threads"] = job.threads
    t0 = time.perf_counter()
    backend = open_backend(job.path.backend, job.model_file, **options)
    open_s = time.perf_counter() - t0
    x = job.timing_input.astype(np.float32) / 255.0
    t0 = time.perf_counter()
    backend(x)
    first_call_s = time.perf_counter() - t0
    for _ in range(job.warmup):
        backend(x)
    times = []
    for _ in range(job.repeats):
        t0 = time.perf_counter()
        backend(x)
        times.append(time.perf_counter() - t0)
    device_times = _device_times(backend, x, job.repeats)
    outputs, nonfinite = [], 0
    imgs = job.psnr_inputs
    for i in range(0, len(imgs), job.batch):
        group = imgs[i : i + job.batch]
        pad = job.batch - len(group)  # keep one input shape (compiled graphs, CUDA graphs)
        if pad:
            group = np.concatenate([group, np.repeat(group[-1:], pad, axis=0)])
        out = backend(group.astype(np.float32) / 255.0)[: job.batch - pad]
        finite = np.isfinite(out)
        nonfinite += int(finite.size - np.count_nonzero(finite))
        outputs += [to_uint8(o.transpose(1, 2, 0)) for o in np.where(finite, out, 0.0)]
    stacked = np.stack(outputs)
    result: dict[str, Any] = {
        "times_s": times,
        "open_s": open_s,
        "first_call_s": first_call_s,
        "outputs": stacked,
        # A miscompiled kernel returns NaN: the PSNR alone would call that merely "worse".
        "nonfinite_fraction": nonfinite / stacked.size,
        "peak_rss_mb": peak_rss_mb(),
    }
    if device_times:
        result["device_times_s"] = device_times
    if torch.cuda.is_available():
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _device_times(backend: Any, x: np.ndarray, repeats: int) -> list[float]:
    """On CUDA, the network alone: ``repeats`` timed forwards of a batch already on the GPU.

    The end-to-end times above also copy the batch to the GPU and the result back from
    pageable host memory (on an H200 that added 28% to compiled bf16 NAFNet-w32 at batch 8):
    what a caller holding numpy arrays pays, not what the GPU does when a pipelined loader
    feeds it. Empty where the backend is not a torch module on CUDA.
    """
    device = getattr(backend, "device", None)
    if not (isinstance(device, torch.device) and device.type == "cuda"):
        return []
    x_dev = backend.prepare(x)
    backend.forward(x_dev)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        backend.forward(x_dev)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB).

    ``VmHWM`` from /proc where there is one: ``ru_maxrss`` of a spawned child starts at the
    parent's resident size at fork time (Linux keeps it across exec), so it would report the
    parent's peak rather than the child's own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure_isolated(job: Job) -> dict[str, Any]:
    """:func:`measure` in a fresh spawned process, so its peak RSS is its own."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(measure, job).result()


# --- the whole benchmark ---------------------------------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """The network under test: a checkpoint file and a label for the report."""

    checkpoint: Path
    label: str


def prepare_model(
    model: str, arch: str, workdir: Path, *, seed: int = 0, models_dir: str | Path = MODELS_DIR
) -> BenchModel:
    """Resolve ``--model``/``--arch`` to a checkpoint under ``workdir`` (or the given file).

    ``arch="paper"``: the paper-size ``model`` (nafnet|dncnn) with perturbed random weights;
    ``arch="checkpoint"``: ``model`` is a .pt file, or a name for ``models/<name>.pt``.
    """
    if arch == "paper":
        if model not in PAPER_ARCH:
            raise DenoiseError(
                f"--arch paper needs --model {' or '.join(PAPER_ARCH)}, not {model!r}"
            )
        net = build_bench_model(model, PAPER_ARCH[model], seed)
        path = workdir / f"{model}-paper.pt"
        save_checkpoint(
            path,
            model,
            PAPER_ARCH[model],
            net.state_dict(),
            meta={"note": f"random init perturbed, seed {seed}"},
        )
        return BenchModel(path, f"{model} paper size, perturbed random weights (seed {seed})")
    if arch != "checkpoint":
        raise DenoiseError(f"unknown --arch {arch!r}; known: checkpoint, paper")
    path = Path(model) if model.endswith((".pt", ".pth")) else checkpoint_path(model, models_dir)
    if not path.is_file():
        raise DenoiseError(
            f"{path}: checkpoint not found (train it with `dvc repro`, pass a "
            ".pt file, or use --arch paper for the paper-size network)"
        )
    return BenchModel(path, str(path))


def _model_files(
    paths: Sequence[BenchPath],
    model: BenchModel,
    workdir: Path,
    calibration: Callable[[], list[np.ndarray]],
    size: int,
    batch: int,
) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """Export/quantise the files the chosen paths open.

    Returns the files, their build times and, per file that could not be built, why: the
    paths that need it are reported as failed while the others are still measured.
    """
    files = {"checkpoint": str(model.checkpoint)}
    build_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    kinds = {p.model_file for p in paths}

    def export() -> None:
        from denoise.export import export_onnx

        export_onnx(load_model(model.checkpoint)[0], files["onnx"])

    def quantize(kind: str, calibrated: bool) -> None:
        quantize_int8(files["onnx"], files[kind], calibration=calibration() if calibrated else None)

    def engine() -> None:
        from denoise.tensorrt import TrtSettings, build_engine

        settings = TrtSettings(
            fp16=True,
            min_shape=(1, size, size),
            opt_shape=(batch, size, size),
            max_shape=(batch, size, size),
            workspace_gb=4,
            test_images=0,
            test_crop=size,
            latency_repeats=0,
            min_psnr_vs_onnxruntime=0.0,
        )
        plan, _ = build_engine(files["onnx"], settings)
        Path(files["trt-plan"]).write_bytes(plan)

    steps: list[tuple[str, str, Callable[[], None]]] = [
        ("onnx", "model.onnx", export),
        ("onnx-int8-static", "onnx-int8-static.onnx", lambda: quantize("onnx-int8-static", True)),
        (
            "onnx-int8-dynamic",
            "onnx-int8-dynamic.onnx",
            lambda: quantize("onnx-int8-dynamic", False),
        ),
        ("trt-plan", "model.plan", engine),
    ]
    needs_onnx = bool(kinds & {kind for kind, _, _ in steps})
    for kind, name, build in steps:
        if kind not in kinds and not (kind == "onnx" and needs_onnx):
            continue
        if kind != "onnx" and "onnx" in errors:
            errors[kind] = errors["onnx"]
            continue
        files[kind] = str(workdir / name)
        t0 = time.perf_counter()
        try:
            build()
        except Exception as e:  # one file failing must not lose the other paths' results
            errors[kind] = f"building {name}: {_describe(e)}"
            continue
        build_s[kind] = time.perf_counter() - t0
    return files, build_s, errors


def _describe(e: BaseException) -> str:
    return first_line(e) if isinstance(e, DenoiseError) else f"{type(e).__name__}: {first_line(e)}"


def run_bench(
    model: str = "nafnet",
    *,
    arch: str = "checkpoint",
    size: int = 512,
    batch: int = 1,
    backends: Sequence[str] | None = None,
    repeats: int = 5,
    warmup: int = 1,
    psnr_images: int = 10,
    test_dir: str | Path | None = TEST_DIR,
    val_dir: str | Path | None = SPLIT_DIR / "val",
    isolate: bool = True,
    threads: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure every selected path; returns ``{"machine", "model", "inputs", "results"}``.

    ``isolate`` runs each path in its own spawned process (honest peak RSS, no state shared
    between paths); without it everything runs here and ``peak_rss_mb`` is this process's
    running peak.
    """
    if size < 16 or batch < 1 or repeats < 1 or psnr_images < 1:
        raise DenoiseError(
            f"need size >= 16, batch, repeats and psnr images >= 1 (got size "
            f"{size}, batch {batch}, repeats {repeats}, images {psnr_images})"
        )
    device = bench_device()
    paths = select_paths(backends, device)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="denoise-bench-") as tmp:
        workdir = Path(tmp)
        bench_model = prepare_model(model, arch, workdir, seed=seed)
        net, ckpt = load_model(bench_model.checkpoint)
        macs = count_macs(net, (1, 3, size, size))
        params = sum(p.numel() for p in net.parameters())
        del net
        files, build_s, errors = _model_files(
            paths, bench_model, workdir, lambda: calibration_batches(val_dir), size, batch
        )
        noisy, clean, source = psnr_pairs(test_dir, psnr_images, size, seed)
        noisy_chw = noisy.transpose(0, 3, 1, 2).copy()
        timing = np.repeat(noisy_chw[:1], batch, axis=0)
        machine = machine_info(device)
        runs: dict[str, dict[str, Any]] = {}
        for path in tqdm(paths, desc="bench", unit="path", disable=not progress):
            if path.model_file in errors:
                runs[path.name] = {"error": errors[path.model_file]}
                continue
            job = Job(
                path, files[path.model_file], timing, noisy_chw, batch, repeats, warmup, threads
            )
            try:
                runs[path.name] = (_measure_isolated if isolate else measure)(job)
            except Exception as e:  # also a crashed child process (BrokenProcessPool)
                runs[path.name] = {"error": _describe(e)}
            if progress:  # a run cut short (a device call's time limit) keeps these lines
                tqdm.write(progress_line(path.name, runs[path.name], batch))
            if path.name == BASELINE and "error" in runs[path.name]:
                raise DenoiseError(
                    f"torch eager FP32, the baseline every ratio needs, failed: "
                    f"{runs[path.name]['error']}"
                )
    results = _summarise(paths, runs, clean, macs, size, batch, machine, build_s)
    return {
        "machine": machine,
        "model": {
            "name": ckpt["model"],
            "config": ckpt["config"],
            "source": bench_model.label,
            "parameters": params,
            "gmacs_per_image": round(macs / 1e9, 3),
        },
        "inputs": {
            "size": size,
            "batch": batch,
            "repeats": repeats,
            "warmup": warmup,
            "psnr_images": source,
            "isolated_processes": isolate,
        },
        "results": results,
    }


def _peak_for(precision: str, machine: dict[str, Any]) -> tuple[float, str]:
    """The measured peak of the path's precision (FP32's when that one was not measured)."""
    key = {"bf16": "peak_gflops_bf16", "fp16": "peak_gflops_fp16", "int8": "peak_gops_int8"}.get(
        precision
    )
    if key and key in machine:
        return machine[key], precision
    return machine["peak_gflops_fp32"], "fp32"


def progress_line(name: str, run: dict[str, Any], batch: int) -> str:
    """One path's speed as soon as it is measured (the table waits for every path)."""
    if "error" in run:
        return f"{name}: failed: {run['error']}"
    line = f"{name}: {batch / statistics.median(run['times_s']):.1f} images/s"
    if run.get("device_times_s"):
        line += f", {batch / statistics.median(run['device_times_s']):.1f} on the GPU"
    return f"{line} (first call {run['first_call_s']:.1f} s)"


def _summarise(
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
    base_rate = batch / statistics.median(base["times_s"])
    base_device_times = base.get("device_times_s")
    base_device_rate = batch / statistics.median(base_device_times) if base_device_times else None
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
                    "error": run["error"],
                }
            )
            continue
        median = statistics.median(run["times_s"])
        rate = batch / median
        out_psnr = statistics.fmean(psnr(o, c) for o, c in zip(run["outputs"], clean, strict=True))
        vs_fp32 = statistics.fmean(
            psnr(o, b) for o, b in zip(run["outputs"], base_out, strict=True)
        )
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
            and not run["nonfinite_fraction"],
            "peak_rss_mb": round(run["peak_rss_mb"], 1),
            "gflops": round(gflops, 2),
            "share_of_peak": round(gflops / peak, 4),
            "peak_compared_with": peak_kind,
            "open_s": round(run["open_s"], 2),
            "first_call_s": round(run["first_call_s"], 2),
        }
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
        f"batch {inp['batch']}, median of {inp['repeats']} calls; PSNR on {inp['psnr_images']}",
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
            f"{r['ratio_vs_torch_eager']:.2f}x | {r['psnr_db']:.2f} | "
            f"{r['psnr_delta_db']:+.3f}{flag} | {agree} | {r['peak_rss_mb']:.0f} | "
            f"{r['gflops']:.1f} | "
            f"{100 * r['share_of_peak']:.1f}% ({r['peak_compared_with']}) | "
            f"{r['first_call_s']:.2f} |" + (_on_device_cell(r) if on_device else "")
        )
    if not all(r["within_psnr_tolerance"] for r in measured):
        lines.append(
            f"\n✗: PSNR differs from FP32 by more than {PSNR_TOLERANCE_DB} dB, or the output "
            "holds NaN/inf; not kept."
        )
    failed = failed_paths(report)
    if failed:
        lines += ["", *(f"failed: {r['path']}: {r['error']}" for r in failed)]
    return "\n".join(lines)


def _on_device_cell(row: dict[str, Any]) -> str:
    rate = row.get("images_per_s_on_device")
    return " - |" if rate is None else f" {rate:.1f} |"


def failed_paths(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The result rows of paths that could not be measured (each has an ``error``)."""
    return [r for r in report["results"] if "error" in r]
