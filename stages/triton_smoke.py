"""Stage triton-smoke: serve the repository with a real tritonserver, query it over HTTP and
gRPC on the test images, check against local onnxruntime, record latency and PSNR."""

from __future__ import annotations

from pathlib import Path

from common import load_params, run_stage

from denoise.paths import REPOSITORY, TEST_DIR
from denoise.triton.smoke import SmokeSettings, smoke_test

METRICS = Path("metrics/triton_smoke.json")


def main() -> None:
    report = smoke_test(
        REPOSITORY, TEST_DIR, METRICS, SmokeSettings.from_params(load_params()["triton"])
    )
    print(f"triton-smoke: server ready in {report['server']['start_s']:.1f} s")
    for model, protocols in report["models"].items():
        for protocol, m in protocols.items():
            print(
                f"  {model} {protocol}: p50 {m['latency_p50_ms']:.1f} ms, "
                f"{m['throughput_img_s']:.1f} img/s, max abs diff vs onnxruntime "
                f"{m['max_abs_diff_vs_onnxruntime']:.1e}, PSNR {m['psnr_in']:.2f} -> "
                f"{m['psnr_out']:.2f} dB"
            )


if __name__ == "__main__":
    run_stage(main)
