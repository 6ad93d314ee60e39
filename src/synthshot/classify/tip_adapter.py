"""A training-free cache model over the synthetic features, in Tip-Adapter's form:

    logits = 100 · F Wᵀ  +  α · exp(-β (1 - F Kᵀ)) · L

K are the synthetic images' features (keys), L their one-hot labels, W the class text features.
α weighs the cache against CLIP's text knowledge, β sharpens the affinities. Both are chosen by
grid search on a validation split; the test split is never looked at when choosing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from synthshot.classify.zeroshot import text_logits

# Tip-Adapter's own defaults, used when no validation data is given to choose from.
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 5.5


def cache_logits(features: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, num_classes: int, beta: float):
    """exp(-β (1 - F Kᵀ)) · L: each key votes for its class with its affinity to the image."""
    affinity = torch.exp(-beta * (1.0 - features.float() @ keys.float().T))
    one_hot = torch.nn.functional.one_hot(key_labels.long(), num_classes).float()
    return affinity @ one_hot


def tip_adapter_logits(
    features: torch.Tensor,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    text_weights: torch.Tensor,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    return text_logits(features, text_weights) + alpha * cache_logits(
        features, keys, key_labels, text_weights.shape[0], beta
    )


@dataclass
class TipSearch:
    alpha: float
    beta: float
    val_top1: float


def search_tip_parameters(
    val_features: torch.Tensor,
    val_labels: Sequence[int],
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    text_weights: torch.Tensor,
    alphas: Sequence[float],
    betas: Sequence[float],
) -> TipSearch:
    """The (α, β) of the grid with the best validation top-1 (first found on ties)."""
    targets = torch.as_tensor(list(val_labels), dtype=torch.long)
    base = text_logits(val_features, text_weights)
    best: TipSearch | None = None
    for beta in betas:
        cached = cache_logits(val_features, keys, key_labels, text_weights.shape[0], beta)
        for alpha in alphas:
            top1 = float(((base + alpha * cached).argmax(-1) == targets).float().mean())
            if best is None or top1 > best.val_top1:
                best = TipSearch(alpha=float(alpha), beta=float(beta), val_top1=top1)
    if best is None:
        raise ValueError("the alpha/beta grid is empty")
    return best
