"""TensorRT: an FP16 engine built from the exported ONNX, and a ``tensorrt`` inference backend.

Written against the TensorRT 8.6-10.x Python API (``build_serialized_network``, named I/O
tensors, ``execute_async_v3``, the weakly-typed ``BuilderFlag.FP16``); CUDA buffers are torch
tensors, so a CUDA build of torch is needed where an engine is run. TensorRT cannot be
installed from the registries this project uses, so everything starts with
:func:`tensorrt_status`: without a supported TensorRT and a CUDA GPU the build is skipped (a
metrics record says why) and never replaced by a placeholder engine.

An engine is specific to the GPU model and TensorRT version it was built with, so it is not a
DVC output (it could not be pulled onto another machine, and DVC outs cannot be optional): the
stage writes it straight into ``<repository>/denoise_trt/`` and records its md5, the GPU and
the TensorRT version in ``metrics/build_trt.json``, which is the tracked output.

LayerNorm: NAFNet's ``LayerNormalization`` layers are pinned to FP32 (with
``OBEY_PRECISION_CONSTRAINTS``); in FP16 ``(x - mean)^2`` overflows and eps 1e-6 underflows.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from denoise.data.pairs import read_crops
from denoise.errors import DenoiseError, first_line
from denoise.fileio import write_json
from denoise.infer import OnnxRuntimeBackend, register_backend
from denoise.padding import PAD_MULTIPLE_KEY, pad_multiple_value
from denoise.params import checked_section, positive_finite
from denoise.triton.repository import (
    BUILD_SETTINGS_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    PLAN_FILE,
    SOURCE_ONNX_KEY,
    TRT_MODEL,
    config_parameter,
    file_md5,
    model_config,
    reference_onnx,
    remove_engine_unless_built_from,
    served_parameters,
    write_model,
)
from denoise.triton.smoke import latency_ms

# Named I/O tensors, execute_async_v3 and the NORMALIZATION layer type need 8.6. TensorRT 11
# removed BuilderFlag.FP16 / OBEY_PRECISION_CONSTRAINTS (strong typing only): there the FP16
# casts would have to be in the ONNX itself, which this module does not do yet.
SUPPORTED = (8, 6)
# Identical images have infinite PSNR, which JSON cannot hold: report at most this.
PSNR_CAP = 100.0


def tensorrt_status() -> tuple[bool, str]:
    """``(True, "TensorRT x on GPU")`` when an engine can be built here, else ``(False, why)``."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return False, f"TensorRT is not installed (import tensorrt: {e})"
    except Exception as e:  # a broken install (missing libnvinfer, CUDA mismatch) is no engine
        return False, f"TensorRT cannot be loaded (import tensorrt: {type(e).__name__}: {e})"
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:  # a broken CUDA runtime raises at query time
        cuda = False
    if not cuda:
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
    version = tuple(int(v) for v in re.findall(r"\d+", trt.__version__)[:2])
    if not SUPPORTED <= version < (11, 0):
        return False, (
            f"TensorRT {trt.__version__} is not supported: this build uses the "
            "weakly-typed FP16 API of TensorRT 8.6-10.x (removed in 11)"
        )
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


@dataclass(frozen=True)
class TrtSettings:
    """The ``trt`` section of params.yaml. Shapes are ``[batch, height, width]``."""

    fp16: bool
    min_shape: tuple[int, int, int]
    opt_shape: tuple[int, int, int]
    max_shape: tuple[int, int, int]
    workspace_gb: float
    test_images: int
    test_crop: int
    latency_repeats: int
    min_psnr_vs_onnxruntime: float

    @classmethod
    def from_params(cls, section: dict[str, Any]) -> TrtSettings:
        s = checked_section(cls, section, "trt")  # each shape: three integers
        lo, opt, hi = s["min_shape"], s["opt_shape"], s["max_shape"]
        if min(lo) < 1 or not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
            raise DenoiseError("params.yaml trt: need 1 <= min_shape <= opt_shape <= max_shape")
        workspace = s["workspace_gb"]
        if not positive_finite(workspace):
            raise DenoiseError(
                f"params.yaml trt.workspace_gb: must be > 0 and finite, got {workspace}"
            )
        for key, least in (("test_images", 1), ("test_crop", 0), ("latency_repeats", 1)):
            if s[key] < least:  # test_crop 0: the whole image
                raise DenoiseError(f"params.yaml trt.{key}: must be >= {least}, got {s[key]}")
        return cls(**s)

    def build_md5(self) -> str:
        """The MD5 of the settings an engine is built with (not those of its checks)."""
        build = [self.fp16, self.min_shape, self.opt_shape, self.max_shape, self.workspace_gb]
        return hashlib.md5(json.dumps(build).encode()).hexdigest()

    def profile(self) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) NCHW shapes of the optimisation profile."""
        return tuple((b, 3, h, w) for b, h, w in (self.min_shape, self.opt_shape, self.max_shape))


def _keep_layernorm_fp32(trt: Any, network: Any, config: Any) -> int:
    """Pin normalisation layers to FP32; returns how many were pinned."""
    norm = getattr(trt.LayerType, "NORMALIZATION", None)
    flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
    if norm is None or flag is None:
        return 0
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == norm:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    if pinned:
        config.set_flag(flag)
    return pinned


def build_engine(onnx_path: str | Path, settings: TrtSettings) -> tuple[bytes, int]:
    """Build a serialized engine from ``onnx_path``; returns ``(plan, fp32-pinned layers)``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DenoiseError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gb * 2**30))
    if settings.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    pinned = _keep_layernorm_fp32(trt, network, config)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *settings.profile())
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DenoiseError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
    return bytes(plan), pinned


def _configured_pad_multiple(plan_path: Path) -> int:
    """The padding multiple in the config of the Triton model a plan belongs to (1: none, or
    a plan outside a model's version folder, ``<model>/<version>/model.plan``)."""
    config = plan_path.parent.parent / "config.pbtxt"
    if not (plan_path.parent.name.isdigit() and config.is_file()):
        return 1
    try:
        text = config.read_text()
    except OSError as e:
        raise DenoiseError(f"{config}: cannot read ({e.strerror or e})") from None
    return pad_multiple_value(config_parameter(text, PAD_MULTIPLE_KEY), str(config))


class TensorRTBackend:
    """A serialized engine run on the GPU: ``(N, 3, H, W)`` float32 -> same shape.

    Batches larger than the profile's maximum are split; a height or width outside the
    profile is a DenoiseError (TensorRT cannot run it).
    """

    name = "tensorrt"

    def __init__(self, plan_path: str | Path, pad_multiple: int | None = None) -> None:
        """``pad_multiple`` (what the network pads its input to, for :func:`denoise_image`):
        by default the one in the Triton config beside the plan (``<model>/config.pbtxt``
        of ``<model>/1/model.plan``), else 1."""
        ok, why = tensorrt_status()
        if not ok:
            raise DenoiseError(f"{plan_path}: tensorrt backend unavailable: {why}")
        import tensorrt as trt
        import torch

        self._torch = torch
        path = Path(plan_path)
        if not path.is_file():
            raise DenoiseError(f"{path}: TensorRT engine not found")
        self._logger = trt.Logger(trt.Logger.WARNING)  # must outlive the runtime
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise DenoiseError(
                f"{path}: cannot load the engine (built for another GPU or "
                "TensorRT version? rebuild it with the build-trt stage)"
            )
        self.context = self.engine.create_execution_context()
        self.min_shape, _, self.max_shape = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.pad_multiple = pad_multiple or _configured_pad_multiple(path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1] != 3 or not len(batch):
            raise DenoiseError(
                f"tensorrt: wrong input shape {batch.shape}, expected (N, 3, H, W) with N >= 1"
            )
        h, w = batch.shape[2:]
        if not (
            self.min_shape[2] <= h <= self.max_shape[2]
            and self.min_shape[3] <= w <= self.max_shape[3]
        ):
            raise DenoiseError(
                f"tensorrt: {h}x{w} is outside the engine's profile "
                f"{tuple(self.min_shape[2:])}..{tuple(self.max_shape[2:])}"
            )
        step = int(self.max_shape[0])
        return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).cuda()
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        y = torch.empty(
            tuple(self.context.get_tensor_shape(OUTPUT_NAME)),
            dtype=torch.float32,
            device=x.device,
        )
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise DenoiseError(f"tensorrt: inference failed for input {tuple(x.shape)}")
        stream.synchronize()
        return y.cpu().numpy()


@register_backend("tensorrt")
def open_tensorrt(model: str | Path, **options: Any) -> TensorRTBackend:
    """The ``tensorrt`` inference backend on a ``.plan`` file (DenoiseError without TensorRT)."""
    return TensorRTBackend(model, **options)


def _compare(
    engine: TensorRTBackend,
    reference: OnnxRuntimeBackend,
    test_root: str | Path,
    settings: TrtSettings,
) -> dict[str, float]:
    """PSNR of the engine's output vs onnxruntime's (and vs clean), and engine latency."""
    from denoise.metrics import psnr, to_batch, to_uint8

    pairs = read_crops(test_root, settings.test_images, settings.test_crop)
    vs_ort, vs_clean, times = [], [], []
    for _, noisy, clean in pairs:
        x = to_batch(noisy)
        y_trt = to_uint8(engine(x)[0].transpose(1, 2, 0))
        y_ort = to_uint8(reference(x)[0].transpose(1, 2, 0))
        vs_ort.append(min(psnr(y_trt, y_ort), PSNR_CAP))
        vs_clean.append(psnr(y_trt, clean))
    x = to_batch(pairs[0][1])
    engine(x)  # warm-up
    for _ in range(max(1, settings.latency_repeats)):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    return {
        "psnr_vs_onnxruntime": float(np.mean(vs_ort)),
        "psnr_out": float(np.mean(vs_clean)),
        **latency_ms(times),
    }


def _build_check_publish(
    repository: str | Path, test_root: str | Path, settings: TrtSettings, report: dict[str, Any]
) -> None:
    """Build the engine from the repository's ONNX, check it against onnxruntime and publish
    it as ``denoise_trt``; ``report`` gets what is known at each step."""
    import tensorrt as trt
    import torch

    onnx_path = reference_onnx(repository)
    report.update(onnx=str(onnx_path), tensorrt=trt.__version__)
    served = served_parameters(onnx_path)  # the padding multiple and the network
    multiple = int(served[PAD_MULTIPLE_KEY])
    t0 = time.perf_counter()
    plan, pinned = build_engine(onnx_path, settings)
    report.update(
        gpu=torch.cuda.get_device_name(0),
        build_s=time.perf_counter() - t0,
        engine_bytes=len(plan),
        engine_md5=hashlib.md5(plan).hexdigest(),
        fp16=settings.fp16,
        fp32_layernorm_layers=pinned,
        profile={
            k: list(v) for k, v in zip(("min", "opt", "max"), settings.profile(), strict=True)
        },
    )
    with tempfile.TemporaryDirectory(prefix="denoise-trt-") as tmp:
        plan_path = Path(tmp) / PLAN_FILE
        plan_path.write_bytes(plan)
        reference = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])
        engine = TensorRTBackend(plan_path, pad_multiple=multiple)
        report.update(_compare(engine, reference, test_root, settings))
        if not report["psnr_vs_onnxruntime"] >= settings.min_psnr_vs_onnxruntime:
            raise DenoiseError(
                f"{onnx_path}: TensorRT output is "
                f"{report['psnr_vs_onnxruntime']:.1f} dB from onnxruntime (< trt."
                f"min_psnr_vs_onnxruntime {settings.min_psnr_vs_onnxruntime:g}); "
                "engine not published"
            )
        config = model_config(
            TRT_MODEL,
            platform="tensorrt_plan",
            max_batch_size=settings.max_shape[0],
            instance_kind="KIND_GPU",
            parameters={
                **served,
                SOURCE_ONNX_KEY: file_md5(onnx_path),
                BUILD_SETTINGS_KEY: settings.build_md5(),
            },
        )
        write_model(repository, TRT_MODEL, config, {PLAN_FILE: plan_path})
    report["status"] = "built"


def build_trt(
    repository: str | Path, test_root: str | Path, metrics_path: str | Path, settings: TrtSettings
) -> dict[str, Any]:
    """The build-trt stage: build, check and publish ``denoise_trt``, or record a skip.

    A ``denoise_trt`` entry left from an earlier ONNX or other build settings (or of no known
    ones) is removed first, whatever happens next: it would serve a stale model. One built
    from the repository's ONNX with these settings stays (on a machine without TensorRT, it is
    kept: it took a GPU to build, and nothing here can rebuild it). Skipped (no TensorRT or no
    GPU): writes ``{"status": "skipped", "reason": ...}`` and exits normally. Built: the
    engine must reach ``min_psnr_vs_onnxruntime`` against onnxruntime on the test images (an
    FP16 NaN/overflow shows up here), else nothing is published. A failure at any step writes
    ``{"status": "failed", "reason": ...}`` with what was known by then.
    """
    ok, why = tensorrt_status()
    target = Path(repository) / TRT_MODEL
    try:
        onnx_md5 = file_md5(reference_onnx(repository))
    except DenoiseError:
        onnx_md5 = ""  # no ONNX: no engine is of it
    stale = remove_engine_unless_built_from(repository, onnx_md5, settings.build_md5())
    report: dict[str, Any] = {}
    if not ok:
        report.update(status="skipped", reason=why)
        if stale:
            report["removed_stale"] = str(target)
        elif target.is_dir():
            report["kept_engine"] = str(target)  # built from this ONNX by an earlier run
        write_json(metrics_path, report)
        print(f"build-trt: skipped: {why}")
        return report
    # filled as the build goes: a failure records how far it got
    try:
        _build_check_publish(repository, test_root, settings, report)
    except Exception as e:  # whatever failed, the metrics say so (not an earlier run's result)
        failed = {**report, "status": "failed", "reason": first_line(e)}
        if target.is_dir():  # an earlier build of this ONNX and these settings, still served
            failed["kept_engine"] = str(target)
        write_json(metrics_path, failed)
        raise
    write_json(metrics_path, report)
    print(
        f"build-trt: {report['gpu']}, built in {report['build_s']:.1f} s, "
        f"{report['psnr_vs_onnxruntime']:.1f} dB vs onnxruntime, "
        f"p50 {report['latency_p50_ms']:.2f} ms"
    )
    return report
