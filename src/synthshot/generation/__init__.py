"""Synthetic image generation: guidance math, IP-Adapter gating, pipelines, class similarity and
IP-Adapter input augmentation."""
