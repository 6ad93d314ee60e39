"""Text zero-shot logits and their mixture with image prototypes.

CLIP's standard baseline scores an image by the cosine between its feature and the text feature
of each class prompt (the mean of several templates for an ensemble), times CLIP's logit scale.
"""

from __future__ import annotations

import torch

CLIP_LOGIT_SCALE = 100.0


def text_logits(features: torch.Tensor, text_weights: torch.Tensor, scale: float = CLIP_LOGIT_SCALE) -> torch.Tensor:
    """[N, C] = scale · F Wᵀ, with F and W L2-normalised rows."""
    if features.shape[-1] != text_weights.shape[-1]:
        raise ValueError(
            f"image features have {features.shape[-1]} dimensions but text features {text_weights.shape[-1]}: "
            "they come from different CLIP models"
        )
    return scale * features.float() @ text_weights.float().T


def combined_logits(image_logits: torch.Tensor, txt_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """weight · softmax(image) + (1 - weight) · softmax(text): probabilities, so that the two
    scores, which live on different scales (dot products vs scaled cosines), mix fairly."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"combine weight must be in [0, 1], got {weight}")
    return weight * image_logits.softmax(-1) + (1.0 - weight) * txt_logits.softmax(-1)
