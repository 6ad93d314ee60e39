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


def combined_logits(prototype_scores: torch.Tensor, txt_logits: torch.Tensor, weight: float,
                    scale: float = CLIP_LOGIT_SCALE) -> torch.Tensor:
    """weight · scale · P + (1 - weight) · T: the prototype classifier's scores P (dot products or
    cosines of normalised features with the prototypes, exactly as it makes them) put on CLIP's
    logit scale, the scale the text logits T already carry, then mixed as logits (as Tip-Adapter
    mixes its cache and text logits). Mixing softmaxes instead would follow the text alone: the
    softmax of raw dot products is nearly flat. weight 1 is the prototype classifier, 0 the text."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"combine weight must be in [0, 1], got {weight}")
    return weight * scale * prototype_scores.float() + (1.0 - weight) * txt_logits.float()
