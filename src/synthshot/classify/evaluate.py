"""Scoring the training-free classifiers (LGCLIP and baselines) on feature matrices.

Pure functions over tensors: the `evaluate` stage (`synthshot/stages/evaluate.py`) gathers the
features and calls `score_methods`; every hyper-parameter (the mixture weight, Tip-Adapter's alpha
and beta) is chosen on validation features only, never on test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from synthshot.errors import DataError
from synthshot.io import parse_json

PROTOTYPES_FILE = "prototypes.safetensors"
METHODS = ("prototypes", "text", "combined", "tip_adapter")
TEXT_METHODS = frozenset({"text", "combined", "tip_adapter"})
IMAGE_METHODS = frozenset({"prototypes", "combined", "tip_adapter"})
# CLIP's own ensemble for datasets the registry does not know (a subset of openai/CLIP's ImageNet list).
GENERIC_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a rendering of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
)
COMBINE_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class Split:
    """Features of one evaluation split and their labels."""

    name: str  # "val" or "test"
    features: torch.Tensor
    labels: list[int]


def class_text_prompts(dataset: str | None, which: str, class_names: dict[str, str]) -> dict[str, list[str]]:
    """The text prompts of each class: the dataset's first zero-shot template, or its ensemble."""
    if dataset is not None:
        from synthshot.data.registry import get_dataset

        templates = list(get_dataset(dataset).zeroshot_templates)
    else:
        templates = list(GENERIC_TEMPLATES)
    from synthshot.classify.text import class_prompts

    return class_prompts(class_names, templates[:1] if which == "single" else templates)


def load_prototypes(folder: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read prototypes saved by the `prototypes` stage (to classify new images with them)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        info = parse_json((folder / "prototypes.json").read_text(encoding="utf-8"))
        tensor = load_file(str(folder / PROTOTYPES_FILE))["prototypes"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder} holds no readable prototypes ({exc}): run `synthshot prototypes`") from None
    if tensor.shape[0] != len(info.get("classes", [])):
        raise DataError(f"{folder}: {tensor.shape[0]} prototypes but {len(info.get('classes', []))} classes: rebuild them")
    return tensor, info["classes"]


def best_on_val(grid, logits_for, val_labels: torch.Tensor) -> float:
    """The grid value with the best validation top-1 (the first on ties)."""
    best, best_top1 = grid[0], -1.0
    for value in grid:
        top1 = float((logits_for(value).argmax(-1) == val_labels).float().mean())
        if top1 > best_top1:
            best, best_top1 = value, top1
    return best


def score_methods(methods: list[str], settings, splits: list[Split], classes: list[str], *, prototypes=None,
                  keys=None, key_labels=None, text_weights=None, on_result=None) -> list[dict]:
    """One results entry per (method, split) with its metrics: `settings` is the
    `ClassifierConfig`; a validation split (named "val"), when present, chooses the parameters."""
    from synthshot.classify.metrics import classification_metrics
    from synthshot.classify.prototypes import prototype_logits
    from synthshot.classify.tip_adapter import DEFAULT_ALPHA, DEFAULT_BETA, search_tip_parameters, tip_adapter_logits
    from synthshot.classify.zeroshot import combined_logits, text_logits

    val = next((s for s in splits if s.name == "val"), None)
    val_labels = torch.tensor(val.labels) if val is not None else None

    def image_scores(feats):
        return prototype_logits(feats, prototypes, settings.score)

    entries: list[dict] = []
    for method in methods:
        params: dict = {}
        selected_on = None
        if method == "prototypes":
            params = {"score": settings.score}
            score = image_scores
        elif method == "text":
            params = {"templates": settings.text_templates}
            score = lambda feats: text_logits(feats, text_weights)
        elif method == "combined":
            weight = settings.combine_weight
            if val is not None:
                weight = best_on_val(
                    COMBINE_GRID,
                    lambda w: combined_logits(image_scores(val.features), text_logits(val.features, text_weights), w),
                    val_labels,
                )
                selected_on = "val"
            params = {"weight": weight, "score": settings.score}
            score = lambda feats, w=weight: combined_logits(image_scores(feats), text_logits(feats, text_weights), w)
        elif method == "tip_adapter":
            alpha, beta = DEFAULT_ALPHA, DEFAULT_BETA
            if val is not None:
                found = search_tip_parameters(val.features, val_labels, keys, key_labels, text_weights,
                                              settings.tip_alpha, settings.tip_beta)
                alpha, beta, selected_on = found.alpha, found.beta, "val"
            params = {"alpha": alpha, "beta": beta}
            score = lambda feats, a=alpha, b=beta: tip_adapter_logits(feats, keys, key_labels, text_weights, a, b)
        else:
            raise ValueError(f"unknown method {method!r}: one of {', '.join(METHODS)}")
        for split in splits:
            predictions = score(split.features).argmax(-1).tolist()
            entry = {"method": method, "split": split.name, "params": params, "selected_on": selected_on,
                     "metrics": classification_metrics(split.labels, predictions, classes)}
            entries.append(entry)
            if on_result is not None:
                on_result(entry)
    return entries
