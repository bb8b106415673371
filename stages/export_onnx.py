"""Stage export-onnx: models/<model>.pt -> ONNX, checked, into the Triton model repository."""

from __future__ import annotations

from common import load_params, run_stage

from denoise.checkpoint import checkpoint_path
from denoise.export import ExportSettings, export_checkpoint
from denoise.paths import EXPORT_METRICS, REPOSITORY


def main() -> None:
    params = load_params()
    report = export_checkpoint(
        checkpoint_path(params["model"]),
        REPOSITORY,
        EXPORT_METRICS,
        ExportSettings.from_params(params["export"]),
    )
    print(
        f"export-onnx: {report['model']} opset {report['opset']}, "
        f"{report['layernorm_nodes']} LayerNormalization nodes, max abs diff vs PyTorch "
        f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:g})"
    )


if __name__ == "__main__":
    run_stage(main)
