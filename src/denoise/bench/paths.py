"""The ways ``denoise bench`` can run a model (*paths*): a backend and its speed options."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from denoise.errors import DenoiseError
from denoise.fused.dwconv_gate import DwconvForm
from denoise.fused.pixelwise import PixelwiseForm

BASELINE = "torch"


@dataclass(frozen=True)
class BenchPath:
    """One way of running the model: a backend of :mod:`denoise.infer` and its options.

    ``model_file`` says what the backend opens: the checkpoint, the FP32 ONNX export or an
    int8-quantised ONNX file (``onnx-int8-static`` / ``onnx-int8-dynamic``) or a TensorRT engine
    (``trt-plan``).
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
# convolutions ran 77-176x slower than cuDNN, and timing them took much of a compile that
# was still running after 283 s.
AUTOTUNE_OPTIONS: dict[str, Any] = {
    "max_autotune": True,
    "coordinate_descent_tuning": True,
    "triton.cudagraphs": True,
    "conv_1x1_as_mm": True,
    "max_autotune_conv_backends": "ATEN",
}


def _inference_form(
    name: str,
    precision: str,
    compile_how: bool | str,
    description: str,
    *,
    dwconv: DwconvForm = "triton",
    pixelwise: PixelwiseForm = "triton",
    needs_cuda: bool = False,
) -> BenchPath:
    """A path through NAFNet's inference form, channels_last, its depthwise form ``dwconv``
    and per-pixel form ``pixelwise``."""
    options = {"channels_last": True, "amp": False, "compile": compile_how, "fuse": True}
    return BenchPath(
        name,
        "torch",
        precision,
        options | {"fuse_dwconv": dwconv, "fuse_pixelwise": pixelwise},
        needs_cuda=needs_cuda,
        opt_in=True,
        description=description,
    )


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
    # NAFNet's inference form (denoise.fused.nafnet): fewer passes over memory, its depthwise
    # convolution and gate in one of three forms (denoise.fused.dwconv_gate), each block's
    # per-pixel work in one of two (denoise.fused.pixelwise).
    _inference_form("torch-fused", "fp32", False, "NAFNet's inference form, FP32, channels_last"),
    _inference_form("torch-fused-compile", "fp32", True, "torch.compile of torch-fused"),
    _inference_form(
        "torch-bf16-fused", "bf16", False, "torch-fused cast to bf16 (Triton kernels on CUDA)"
    ),
    _inference_form("torch-bf16-fused-compile", "bf16", True, "torch.compile of torch-bf16-fused"),
    _inference_form(
        "torch-bf16-fused-graphs",
        "bf16",
        "reduce-overhead",
        "torch-bf16-fused-compile in CUDA graphs",
        needs_cuda=True,
    ),
    # CUDA only: elsewhere each "triton" form is the PyTorch one
    _inference_form(
        "torch-bf16-fused-dwconv-graphs",
        "bf16",
        "reduce-overhead",
        "torch-bf16-fused-graphs, the per-pixel work in PyTorch (the dwconv kernel only)",
        pixelwise="torch",
        needs_cuda=True,
    ),
    _inference_form(
        "torch-bf16-fused-plain-compile",
        "bf16",
        True,
        "torch-bf16-fused-compile, cuDNN's dwconv, no Triton kernel",
        dwconv="conv",
        pixelwise="torch",
        needs_cuda=True,
    ),
    _inference_form(
        "torch-fused-shift-compile",
        "fp32",
        True,
        "torch-fused-compile, dwconv as nine shifted taps",
        dwconv="shifted",
    ),
    _inference_form(
        "torch-bf16-fused-shift-compile",
        "bf16",
        True,
        "torch-bf16-fused-compile, dwconv as nine taps",
        dwconv="shifted",
    ),
    _inference_form(
        "torch-bf16-fused-shift-graphs",
        "bf16",
        "reduce-overhead",
        "torch-bf16-fused-shift-compile in CUDA graphs",
        dwconv="shifted",
        needs_cuda=True,
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
