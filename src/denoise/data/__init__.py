"""Data: SIDD download, the synthetic camera, crops and splits, the training Dataset."""
