"""Stage build-trt: the ONNX -> an FP16 TensorRT engine (denoise_trt), or a recorded skip.

Without TensorRT or a CUDA GPU (CPU machines, CI) it writes a skipped record and exits 0.
The engine is not a DVC output: it only runs on the GPU/TensorRT it was built with (see
denoise/tensorrt.py); metrics/build_trt.json records it.
"""

from __future__ import annotations

from pathlib import Path

from common import load_params, run_stage

from denoise.paths import REPOSITORY, TEST_DIR
from denoise.tensorrt import TrtSettings, build_trt

METRICS = Path("metrics/build_trt.json")


def main() -> None:
    build_trt(REPOSITORY, TEST_DIR, METRICS, TrtSettings.from_params(load_params()["trt"]))


if __name__ == "__main__":
    run_stage(main)
