"""Training-free classifiers and metrics, against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from synthshot.classify.metrics import classification_metrics, confusion_matrix
from synthshot.classify.prototypes import class_prototypes, prototype_logits
from synthshot.classify.tip_adapter import cache_logits, search_tip_parameters, tip_adapter_logits
from synthshot.classify.zeroshot import combined_logits, text_logits
from synthshot.errors import DataError


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_prototypes_are_class_means_not_renormalised():
    feats = unit(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))
    labels = [0, 0, 1, 1, 1, 2]
    protos = class_prototypes(feats, labels, ["a", "b", "c"])
    assert torch.allclose(protos[0], feats[:2].mean(0))
    assert torch.allclose(protos[1], feats[2:5].mean(0))
    assert torch.allclose(protos[2], feats[5])
    assert protos[1].norm() < 1.0  # the mean of unit vectors is shorter than 1 and kept so


def test_dot_and_cosine_scores():
    protos = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    x = unit(torch.tensor([[1.0, 1.0]]))
    dot = prototype_logits(x, protos, "dot")
    cos = prototype_logits(x, protos, "cosine")
    assert torch.allclose(dot, torch.tensor([[2 / math.sqrt(2), 0.5 / math.sqrt(2)]]))
    assert torch.allclose(cos, torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)]]))
    with pytest.raises(ValueError):
        prototype_logits(x, protos, "euclid")


def test_class_without_synthetic_image_is_named():
    with pytest.raises(DataError, match="'zebra'"):
        class_prototypes(torch.ones(2, 3), [0, 0], ["horse", "zebra"])


def test_text_logits_and_dimension_check():
    feats, text = unit(torch.randn(3, 8)), unit(torch.randn(5, 8))
    assert torch.allclose(text_logits(feats, text), 100 * feats @ text.T)
    with pytest.raises(ValueError, match="different CLIP models"):
        text_logits(feats, unit(torch.randn(5, 4)))


def test_combined_puts_prototype_scores_on_the_text_logit_scale():
    """weight · s · P + (1 - weight) · T with s = CLIP's logit scale: the prototype scores come in
    exactly as the prototype classifier makes them (dot products), the text logits already scaled."""
    img, txt = torch.rand(4, 3), 100 * torch.rand(4, 3) / 3
    assert torch.allclose(combined_logits(img, txt, 1.0), 100 * img)
    assert torch.allclose(combined_logits(img, txt, 0.0), txt)
    assert torch.allclose(combined_logits(img, txt, 0.3), 0.3 * 100 * img + 0.7 * txt)
    with pytest.raises(ValueError):
        combined_logits(img, txt, 1.5)


def test_combined_can_disagree_with_both_classifiers_at_intermediate_weights():
    """Prototypes pick class 0 and text class 1, each with class 2 close behind: the blend picks 2.
    (Mixing softmaxes of raw dot products and of scaled text logits follows the text alone.)"""
    prototype_scores = torch.tensor([[0.90, 0.60, 0.85]])
    text = torch.tensor([[20.0, 30.0, 29.0]])
    assert prototype_scores.argmax().item() == 0 and text.argmax().item() == 1
    for weight in (0.3, 0.5, 0.6):
        assert combined_logits(prototype_scores, text, weight).argmax().item() == 2, weight


def test_tip_adapter_formula_and_alpha_zero_is_zero_shot():
    g = torch.Generator().manual_seed(1)
    feats, keys, text = unit(torch.randn(4, 6, generator=g)), unit(torch.randn(9, 6, generator=g)), unit(torch.randn(3, 6, generator=g))
    key_labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    alpha, beta = 0.7, 3.0
    expected = 100 * feats @ text.T
    for i in range(4):
        for j in range(9):
            expected[i, key_labels[j]] += alpha * math.exp(-beta * (1 - float(feats[i] @ keys[j])))
    assert torch.allclose(tip_adapter_logits(feats, keys, key_labels, text, alpha, beta), expected, atol=1e-4)
    assert torch.allclose(tip_adapter_logits(feats, keys, key_labels, text, 0.0, beta), 100 * feats @ text.T)
    assert cache_logits(feats, keys, key_labels, 3, beta).shape == (4, 3)


def test_tip_search_picks_the_best_validation_pair():
    # Text features point the wrong way; the cache (keys = the validation images) is right, so
    # a large alpha must win.
    keys = torch.eye(3)
    key_labels = torch.tensor([0, 1, 2])
    text = torch.eye(3)[[1, 2, 0]]
    found = search_tip_parameters(keys, [0, 1, 2], keys, key_labels, text, alphas=[0.0, 1000.0], betas=[1.0, 5.0])
    assert found.alpha == 1000.0 and found.val_top1 == 1.0


def test_metrics():
    m = classification_metrics([0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 0, 2], ["a", "b", "c", "d"])
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["balanced_top1"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)  # class d has no test image
    assert m["per_class"]["d"] is None and m["support"]["a"] == 3
    assert m["confusion"][0] == [2, 1, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 5], [0, 0], 3)
