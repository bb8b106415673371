"""int8 ONNX models for onnxruntime: static QDQ (calibrated) or dynamic quantisation."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from denoise.triton.repository import INPUT_NAME


def quantize_int8(
    onnx_path: str | Path, out_path: str | Path, *, calibration: Sequence[np.ndarray] | None = None
) -> None:
    """Quantise an FP32 ONNX model's convolutions to int8.

    With ``calibration`` batches: static QDQ (per-channel int8 weights, uint8 activations whose
    ranges come from the batches), the form onnxruntime runs with int8 convolution kernels.
    Without: dynamic quantisation (ConvInteger, uint8 weights and activations; activation
    ranges computed at run time).
    The first and last convolutions stay FP32: they touch the image itself, where 8-bit
    activations would cost PSNR directly.
    """
    import onnx
    from onnxruntime import quantization as q

    src = Path(onnx_path)
    convs = [
        n.name
        for n in onnx.load(str(src), load_external_data=False).graph.node
        if n.op_type == "Conv"
    ]
    exclude = sorted({convs[0], convs[-1]}) if convs else []  # the image in and out: FP32
    with tempfile.TemporaryDirectory(prefix="denoise-quant-") as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        q.quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        if calibration is None:
            q.quantize_dynamic(
                str(prepped),
                str(out_path),
                # onnxruntime's CPU ConvInteger has a uint8 x uint8 kernel only: int8 weights
                # give a model that fails to load (NOT_IMPLEMENTED).
                weight_type=q.QuantType.QUInt8,
                op_types_to_quantize=["Conv"],
                nodes_to_exclude=exclude,
                per_channel=True,
            )
            return
        reader = _Batches(calibration)
        q.quantize_static(
            str(prepped),
            str(out_path),
            reader,
            quant_format=q.QuantFormat.QDQ,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=exclude,
            calibrate_method=q.CalibrationMethod.MinMax,
        )


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over a list of NCHW float batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}
