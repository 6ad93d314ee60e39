"""The parts of fine-tuning against their definitions: the loss (DIPSY Eq. 10), the learning-rate
schedule, the epoch order of real and synthetic images, the augmentation, the text classifier."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from synthshot.classify.finetune import lr_factor
from synthshot.classify.losses import weighted_loss
from synthshot.classify.train_data import (
    RANDAUGMENT_OPS,
    AugmentSettings,
    TrainTransform,
    collate_pairs,
    epoch_plan,
    randaugment_op,
    random_resized_crop_box,
)


# ---------------------------------------------------------------------------------- the loss
def _batch(seed, n, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)


def _ce(logits, labels):
    """Cross-entropy written out: mean over images of -log softmax at the true class."""
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_p[torch.arange(len(labels)), labels].mean()


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
def test_weighted_loss_is_lambda_real_plus_one_minus_lambda_synthetic(lam):
    real, real_y = _batch(0, 4)
    synth, synth_y = _batch(1, 6)  # the two sets need not be the same size: each CE is its own mean
    expected = lam * _ce(real, real_y) + (1 - lam) * _ce(synth, synth_y)
    assert torch.allclose(weighted_loss(real, real_y, synth, synth_y, lam), expected, atol=1e-6)


def test_lambda_one_is_real_only_and_lambda_zero_synthetic_only():
    real, real_y = _batch(0, 4)
    synth, synth_y = _batch(1, 4)
    assert torch.allclose(weighted_loss(real, real_y, None, None, 1.0), F.cross_entropy(real, real_y))
    assert torch.allclose(weighted_loss(None, None, synth, synth_y, 0.0), F.cross_entropy(synth, synth_y))
    # A set with weight 0 is left out, not multiplied by zero: a NaN there cannot leak in.
    nan = torch.full_like(synth, float("nan"))
    assert torch.isfinite(weighted_loss(real, real_y, nan, synth_y, 1.0))
    # The gradient of the synthetic logits is (1 - lam) times the plain CE gradient.
    synth.requires_grad_(True)
    weighted_loss(real, real_y, synth, synth_y, 0.8).backward()
    plain = synth.detach().clone().requires_grad_(True)
    F.cross_entropy(plain, synth_y).backward()
    assert torch.allclose(synth.grad, 0.2 * plain.grad, atol=1e-7)


def test_weighted_loss_refuses_a_missing_set_it_needs():
    real, real_y = _batch(0, 4)
    with pytest.raises(ValueError, match="no synthetic images"):
        weighted_loss(real, real_y, None, None, 0.8)
    with pytest.raises(ValueError, match="lam must be in"):
        weighted_loss(real, real_y, real, real_y, 1.5)


# ------------------------------------------------------------------------------ the schedule
def test_lr_factor_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    total, warmup, floor = 100, 10, 1e-4
    factors = [lr_factor(step, total, warmup, floor) for step in range(total)]
    assert factors[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    middle = warmup + (total - warmup) // 2
    assert factors[middle] == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    after = factors[warmup:]
    assert all(after[i] >= after[i + 1] for i in range(len(after) - 1))
    assert lr_factor(total, total, warmup, floor) == pytest.approx(floor)
    assert lr_factor(0, 5, 0, 0.0) == pytest.approx(1.0)  # no warm-up: start at the full rate


# ------------------------------------------------------------------------------ epoch order
def test_epoch_plan_passes_over_the_larger_set_and_cycles_the_smaller():
    plan = epoch_plan(num_real=3, num_synthetic=10, epoch=0, seed=7)
    assert len(plan) == 10
    real, synthetic = zip(*plan)
    assert sorted(synthetic) == list(range(10))  # every synthetic image once
    counts = np.bincount(real, minlength=3)
    assert counts.min() >= 3 and counts.max() <= 4  # real replicated evenly
    assert sorted(real[:3]) == [0, 1, 2] and sorted(real[3:6]) == [0, 1, 2]  # each cycle is a permutation
    assert epoch_plan(3, 10, 0, 7) == plan  # fixed by (seed, epoch)
    assert epoch_plan(3, 10, 1, 7) != plan
    assert epoch_plan(3, 10, 0, 8) != plan


def test_epoch_plan_with_one_set_only():
    plan = epoch_plan(num_real=4, num_synthetic=0, epoch=2, seed=0)
    assert [s for _, s in plan] == [None] * 4 and sorted(r for r, _ in plan) == [0, 1, 2, 3]


def test_collate_pairs_balances_and_marks_a_missing_set_empty():
    item = {"real": (torch.zeros(3, 8, 8), 1), "synthetic": (torch.ones(3, 8, 8), 2)}
    batch = collate_pairs([item, item])
    assert batch["real_pixels"].shape == batch["synthetic_pixels"].shape == (2, 3, 8, 8)
    assert batch["real_labels"].tolist() == [1, 1] and batch["synthetic_labels"].tolist() == [2, 2]
    only_real = collate_pairs([{"real": (torch.zeros(3, 8, 8), 0), "synthetic": None}])
    assert only_real["synthetic_pixels"].numel() == 0 and only_real["synthetic_labels"].numel() == 0


# ----------------------------------------------------------------------------- augmentation
class Processor:
    """The fields of a CLIPImageProcessor the transform reads (crop size, normalisation)."""

    def __init__(self):
        self.crop_size = {"height": 24, "width": 24}
        self.image_mean = [0.5, 0.4, 0.3]
        self.image_std = [0.2, 0.25, 0.3]


def _image(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_random_resized_crop_box_stays_inside_with_the_asked_area():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(64, 48, (0.25, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 48
        area = (right - left) * (bottom - top) / (64 * 48)
        assert 0.2 <= area <= 1.0


def test_augmentation_is_seeded_and_has_the_encoder_input_shape():
    transform = TrainTransform(Processor(), AugmentSettings())
    image = _image()
    a = transform(image, np.random.default_rng([1, 2, 3]))
    b = transform(image, np.random.default_rng([1, 2, 3]))
    c = transform(image, np.random.default_rng([1, 2, 4]))
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_every_randaugment_operation_runs_and_magnitude_zero_changes_geometry_nothing():
    image = _image(size=(24, 24))
    for name in RANDAUGMENT_OPS:
        out = randaugment_op(image, name, 9, -1.0)
        assert out.size == image.size and out.mode == "RGB"
    for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "contrast"):
        assert np.array_equal(np.asarray(randaugment_op(image, name, 0, 1.0)), np.asarray(image))


def test_without_augmentation_training_uses_the_evaluation_preprocessing(tiny_kit):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tiny_kit / "clip")
    image = _image(size=(50, 40))
    pixels = TrainTransform(processor, None)(image, np.random.default_rng(0))
    assert torch.equal(pixels, processor(images=image, return_tensors="pt")["pixel_values"][0])


# -------------------------------------------------------------------------- text classifier
def test_text_classifier_weights_average_normalised_prompt_features(tiny_kit, hub_options):
    from synthshot.classify.text import class_prompts, text_classifier_weights
    from synthshot.models.clip import load_clip

    bundle = load_clip(str(tiny_kit / "clip"), hub_options)
    prompts = class_prompts({"cat": "cat", "dog": "dog"}, ["a photo of a {}.", "a drawing of a {}."])
    assert prompts["cat"] == ["a photo of a cat.", "a drawing of a cat."]
    weights = text_classifier_weights(bundle, prompts, "cpu")
    assert weights.shape == (2, bundle.model.config.projection_dim)
    assert torch.allclose(weights.norm(dim=1), torch.ones(2), atol=1e-5)

    with torch.no_grad():
        tokens = bundle.tokenizer(prompts["dog"], padding=True, return_tensors="pt")
        single = F.normalize(bundle.model.get_text_features(**tokens).pooler_output, dim=-1)
    assert torch.allclose(weights[1], F.normalize(single.mean(0), dim=0), atol=1e-5)

    # Classes may have different numbers of prompts (LLM prompts); each row is its own class's mean.
    uneven = text_classifier_weights(bundle, {"cat": prompts["cat"][:1], "dog": prompts["dog"]}, "cpu", batch_size=1)
    assert torch.allclose(uneven[1], weights[1], atol=1e-5)
    assert not torch.allclose(uneven[0], weights[0], atol=1e-3)


def test_class_templates_come_from_the_registry():
    from synthshot.classify.text import GENERIC_TEMPLATE, class_templates
    from synthshot.data.registry import get_dataset

    eurosat = get_dataset("eurosat")
    assert class_templates("eurosat", "single") == [eurosat.zeroshot_templates[0]]
    assert class_templates("eurosat", "ensemble") == list(eurosat.zeroshot_templates)
    assert class_templates(None) == [GENERIC_TEMPLATE]
