"""The fine-tuning loss on real and synthetic images (DIPSY Eq. 10, DataDream's recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_loss(
    real_logits: torch.Tensor | None,
    real_labels: torch.Tensor | None,
    synth_logits: torch.Tensor | None,
    synth_labels: torch.Tensor | None,
    lam: float,
) -> torch.Tensor:
    """L = λ·CE(real) + (1-λ)·CE(synthetic)   (DIPSY Eq. 10; λ = 0.8 in the paper).

    Each CE is the mean over its own images, so the two sets weigh λ : 1-λ whatever their batch
    sizes. λ = 1 trains on real images only and λ = 0 on synthetic images only: the unused set may
    then be None (or empty), and its term is left out rather than multiplied by zero, so that it
    costs nothing and cannot bring a NaN in.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    terms = []
    for weight, logits, labels, what in (
        (lam, real_logits, real_labels, "real"),
        (1.0 - lam, synth_logits, synth_labels, "synthetic"),
    ):
        if weight == 0.0:
            continue
        if logits is None or labels is None or logits.shape[0] == 0:
            raise ValueError(f"the {what} term has weight {weight:g} but the batch has no {what} images")
        terms.append(weight * F.cross_entropy(logits.float(), labels))
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]
