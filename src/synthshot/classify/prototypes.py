"""LGCLIP's prototype classifier: each class is the mean of its synthetic images' features, and a
real image goes to the class whose prototype it matches best.

    p_c = (1/|S_c|) Σ_{i in S_c} F(x_i)          (not renormalised in the official code)
    ŷ   = argmax_c ⟨F(x), p_c⟩                    ("dot", official) or cos(F(x), p_c) ("cosine")
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from synthshot.errors import DataError


def class_prototypes(features: torch.Tensor, labels: Sequence[int], class_names: Sequence[str]) -> torch.Tensor:
    """The [C, D] matrix of per-class mean features; a class without any feature is an error."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} do not match {labels.shape[0]} labels")
    num_classes = len(class_names)
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
    empty = [class_names[c] for c in range(num_classes) if counts[c] == 0]
    if empty:
        shown = ", ".join(repr(n) for n in empty[:8]) + (" ..." if len(empty) > 8 else "")
        raise DataError(
            f"{len(empty)} class(es) have no synthetic image to build a prototype from: {shown}. "
            "Generate images for them (synthshot generate) or leave them out of the class list"
        )
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float32)
    sums.index_add_(0, labels, features.float())
    return sums / counts.unsqueeze(1).float()


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, score: str = "dot") -> torch.Tensor:
    """[N, C] scores of each feature against each prototype."""
    if score == "cosine":
        prototypes = torch.nn.functional.normalize(prototypes, dim=-1)
    elif score != "dot":
        raise ValueError(f"score must be 'dot' or 'cosine', not {score!r}")
    return features.float() @ prototypes.float().T
