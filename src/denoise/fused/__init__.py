"""NAFNet rewritten for inference (see :mod:`denoise.fused.nafnet`)."""
