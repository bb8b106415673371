"""int8 ONNX: static QDQ keeps the image-facing convolutions FP32 and stays close to FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_models import tiny_model

from denoise.export import export_onnx
from denoise.metrics import psnr, to_uint8
from denoise.quantize import quantize_int8
from denoise.triton.repository import INPUT_NAME


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x})[0]


def _conv_inputs_quantised(path: Path) -> list[bool]:
    """Per Conv node in graph order: is its data input produced by a DequantizeLinear?"""
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    return [
        producer.get(n.input[0]) == "DequantizeLinear" for n in graph.node if n.op_type == "Conv"
    ]


@pytest.mark.parametrize("static", [True, False], ids=["static-qdq", "dynamic"])
def test_int8_model_quantises_inner_convs_and_stays_close(tmp_path: Path, static: bool) -> None:
    fp32 = tmp_path / "model.onnx"
    export_onnx(tiny_model("nafnet"), fp32)
    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(4)]
    int8 = tmp_path / "int8.onnx"
    quantize_int8(fp32, int8, calibration=calibration if static else None)

    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    if static:
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        quantised = _conv_inputs_quantised(int8)
        assert not quantised[0] and not quantised[-1]  # the image-facing convs stay FP32
        assert any(quantised[1:-1])
    else:
        assert "ConvInteger" in ops

    x = rng.random((1, 3, 48, 40), dtype=np.float32)
    ref, out = _run(fp32, x), _run(int8, x)
    assert out.shape == ref.shape and not np.array_equal(out, ref)  # really a different model
    assert psnr(to_uint8(out[0].transpose(1, 2, 0)), to_uint8(ref[0].transpose(1, 2, 0))) > 35


def test_a_network_of_two_convolutions_keeps_both_in_fp32(tmp_path: Path) -> None:
    """Both of them face the image: nothing is left to quantise, and nothing is."""
    fp32 = tmp_path / "model.onnx"
    export_onnx(tiny_model("dncnn", config={"nb": 2, "nc": 8, "batch_norm": False}), fp32)
    rng = np.random.default_rng(0)
    int8 = tmp_path / "int8.onnx"
    quantize_int8(fp32, int8, calibration=[rng.random((1, 3, 16, 16), dtype=np.float32)])
    assert _conv_inputs_quantised(int8) == [False, False]
