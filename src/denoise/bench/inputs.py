"""What the bench feeds the paths: the network (paper size or a checkpoint), the files built
from it (ONNX, int8, TensorRT) and the test images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from denoise.bench.paths import BenchPath
from denoise.checkpoint import checkpoint_path, load_model, save_checkpoint
from denoise.errors import DenoiseError, first_line
from denoise.metrics import to_batch
from denoise.models.registry import build_model
from denoise.paths import MODELS_DIR, TEST_DIR
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
    test_dir: str | Path | None,
    count: int,
    size: int,
    seed: int = 0,
    *,
    project: Path = Path("."),
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(noisy, clean, source)``: ``count`` ``size x size`` uint8 pairs, NHWC.

    Centre crops of the first ``count`` test pairs (reflect-padded where an image is smaller)
    from ``test_dir``, which must hold some. Without one, from the test split of the pipeline
    in ``project`` where it holds any, else synthetic camera pairs; ``source`` says which.
    """
    from denoise.data.pairs import find_pairs, read_pair

    if test_dir is not None:  # asked for: these pairs or an error, never a silent stand-in
        pairs = find_pairs(test_dir)[:count]
        if not pairs:
            raise DenoiseError(f"{test_dir}: no noisy/clean pairs")
    else:
        test_dir = project / TEST_DIR
        try:
            pairs = find_pairs(test_dir)[:count] if test_dir.is_dir() else []
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
    from denoise.data.patch_store import evenly_spaced, read_patch_store

    if val_dir is not None and Path(val_dir).is_dir():
        try:
            noisy, _ = read_patch_store(val_dir)
        except DenoiseError:
            noisy = None
        if noisy is not None and len(noisy):
            idx = evenly_spaced(len(noisy), count)
            crops = [_fit(np.asarray(noisy[i]), size) for i in idx]
            return [to_batch(c) for c in crops]
    noisy, _ = synthetic_pairs(count, size, seed=1)
    return [to_batch(n) for n in noisy]


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
    suffix = Path(model).suffix.lower()
    if suffix and suffix not in (".pt", ".pth"):
        raise DenoiseError(f"{model}: the bench needs a .pt/.pth checkpoint (it exports the rest)")
    path = Path(model) if suffix else checkpoint_path(model, models_dir)
    if not path.is_file():
        raise DenoiseError(
            f"{path}: checkpoint not found (train it with `dvc repro`, pass a "
            ".pt file, or use --arch paper for the paper-size network)"
        )
    return BenchModel(path, str(path))


def build_model_files(
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
            errors[kind] = f"building {name}: {describe_error(e)}"
            continue
        build_s[kind] = time.perf_counter() - t0
    return files, build_s, errors


def describe_error(e: BaseException) -> str:
    return first_line(e) if isinstance(e, DenoiseError) else f"{type(e).__name__}: {first_line(e)}"
