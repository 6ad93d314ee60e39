"""Classifiers over CLIP features: training-free prototypes and caches, LoRA fine-tuning, metrics."""
