"""Training and evaluation: datasets, the feature cache, the trainer, presets, metrics."""
