"""The project layout: where each stage reads and writes, relative to the project folder.

The one definition the stage scripts, the ``denoise`` command and the library share; dvc.yaml
declares the same paths as stage deps and outs (a change here must be mirrored there). Paths
used by one stage only (its metrics file, its plots) stay in that stage's script.
"""

from __future__ import annotations

from pathlib import Path

PARAMS_FILE = Path("params.yaml")
PIPELINE_FILE = Path("dvc.yaml")  # marks the project folder
RAW_DIR = Path("data/raw")  # the download stage's SIDD-layout pairs
SPLIT_DIR = Path("data/split")  # crop-split: train/ and val/ patch stores, test/ whole images
TRAIN_DIR = SPLIT_DIR / "train"
VAL_DIR = SPLIT_DIR / "val"
TEST_DIR = SPLIT_DIR / "test"
MODELS_DIR = Path("models")  # models/<name>.pt: best weights + config
CHECKPOINTS_DIR = Path("checkpoints")  # checkpoints/<name>/last.pt: resume state
DVCLIVE_DIR = Path("dvclive")  # dvclive/<name>: training curves
REPOSITORY = Path("model_repository")  # the Triton model repository
EXPORT_METRICS = Path("metrics/export.json")  # export-onnx's report: which checkpoint it took
