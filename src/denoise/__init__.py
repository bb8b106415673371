"""denoise: a real-image denoising pipeline for smartphone photos (NAFNet, DnCNN)."""

__version__ = "0.1.0"
