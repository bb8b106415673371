"""The pieces of the training loop in :mod:`denoise.train`: config, data order, recipe,
distributed setup, resume state and DVCLive tracking."""
