"""Triton python-backend model: runs the ``model.onnx`` beside it with onnxruntime.

This file is a template, never imported by the ``denoise`` package: the export stage copies it
into ``<repository>/denoise_python/1/model.py``. It runs inside Triton's backend stub, so it
may import only what that environment has: numpy (< 2, or the backend returns empty outputs),
onnxruntime and ``triton_python_backend_utils``. This is the route the CPU-only tritonserver
bundled in nvidia-pytriton can serve (it has the python backend only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def input_problem(x: np.ndarray) -> str | None:
    """Why a request's pixels cannot be denoised (None: they can). The network takes values in
    [0, 1]; a client sending 0-255 would get back noise, one sending NaN a NaN image."""
    if not x.size:
        return f"input is empty (shape {x.shape})"
    low, high = float(x.min()), float(x.max())  # NaN or infinity anywhere shows in these
    if not (math.isfinite(low) and math.isfinite(high)):
        return "input has NaN or infinite values"
    if low < 0.0 or high > 1.0:
        return f"input values must be in [0, 1] (got {low:g} to {high:g}: 8-bit pixels / 255)"
    return None


class TritonPythonModel:
    """One onnxruntime session per model instance; each request is one (N, 3, H, W) batch.

    With dynamic batching Triton hands over every request that waited while the model was
    busy: those of one shape run as one onnxruntime call, and each gets its own rows back.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        use_gpu = args.get("model_instance_kind") == "GPU"
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        responses: list[Any] = [None] * len(requests)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            problem = input_problem(x)
            if problem:  # this request only; the others of the batch are served
                error = pb_utils.TritonError(f"{self.input_name}: {problem}")
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)
            else:
                by_shape.setdefault(x.shape[1:], []).append(i)
        for members in by_shape.values():
            batch = np.concatenate([inputs[i] for i in members])
            try:
                y = self.session.run([self.output_name], {self.input_name: batch})[0]
            except Exception as e:  # reported to these requests; the server keeps serving
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                for i in members:  # an error object each: one shared by two crashes the stub
                    error = pb_utils.TritonError(f"onnxruntime: {first}")
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=error)
                continue
            start = 0
            for i in members:
                rows = np.ascontiguousarray(y[start : start + len(inputs[i])], dtype=np.float32)
                start += len(inputs[i])
                out = pb_utils.Tensor(self.output_name, rows)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
        return responses

    def finalize(self) -> None:
        self.session = None
