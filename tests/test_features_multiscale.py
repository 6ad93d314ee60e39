"""LGCLIP's multi-scale math against its formulas: weights s/sum(s), the weighted combination with
renormalisation, and seeded crop boxes covering s/10 of the image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from synthshot.errors import ConfigError
from synthshot.features.multiscale import (
    ALL_SCALES,
    ASPECT_RATIO_RANGE,
    check_scales,
    combine_scales,
    crop_box,
    crop_boxes,
    crop_seed,
    scale_weights,
)
from synthshot.features.preprocess import PixelSpec, crop_pixels

SHAPES = [(100, 100), (300, 50), (40, 200), (64, 48)]


def test_weights_are_s_over_55_for_the_paper_scales():
    weights = scale_weights(ALL_SCALES)
    assert torch.allclose(weights, torch.tensor([s / 55 for s in range(1, 11)]), atol=1e-7)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_weights_of_a_subset_are_s_over_their_sum():
    assert torch.allclose(scale_weights([2, 5]), torch.tensor([2 / 7, 5 / 7]))
    assert torch.allclose(scale_weights([7]), torch.tensor([1.0]))


@pytest.mark.parametrize("bad", [[], [0, 1], [11], [3, 3], [1.5]])
def test_scales_outside_1_to_10_or_repeated_are_config_errors(bad):
    with pytest.raises(ConfigError, match="1..10"):
        check_scales(bad)


def test_combination_is_the_weighted_sum_of_normalised_embeddings_renormalised():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(3, 10, 16, generator=generator) * torch.rand(3, 10, 1, generator=generator) * 5
    expected = torch.zeros(3, 16)
    for s in range(1, 11):
        expected += (s / 55) * z[:, s - 1] / z[:, s - 1].norm(dim=-1, keepdim=True)
    expected /= expected.norm(dim=-1, keepdim=True)
    combined = combine_scales(z, ALL_SCALES)
    assert torch.allclose(combined, expected, atol=1e-6)
    assert torch.allclose(combined.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_combination_special_cases():
    z = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    # One scale: just the normalised embedding.
    assert torch.allclose(combine_scales(z[:, :1], [4]), torch.nn.functional.normalize(z[:, 0], dim=-1), atol=1e-6)
    # The scales' order does not matter as long as the embeddings follow it.
    assert torch.allclose(combine_scales(z, [2, 5, 9]), combine_scales(z[:, [2, 0, 1]], [9, 2, 5]), atol=1e-6)
    # Each crop is normalised before weighting: rescaling one embedding changes nothing.
    scaled = z.clone()
    scaled[:, 1] *= 100
    assert torch.allclose(combine_scales(scaled, [2, 5, 9]), combine_scales(z, [2, 5, 9]), atol=1e-6)
    with pytest.raises(ValueError):
        combine_scales(z, [1, 2])


def reference_crop(width, height, scale, rng, ratio=(3 / 4, 4 / 3)):
    """torchvision's `RandomResizedCrop.get_params`, written with a numpy rng: ((left, upper, right,
    lower), fell_back). Draw order per attempt: area, log-ratio, then top and left if it fits."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return (left, top, left + w, top + h), False
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h), True


def centre_fallback(width, height):
    return reference_crop(width, height, (1.0, 1.0), FailingRng())[0]


class FailingRng:
    """Draws that never fit: the largest area at the most extreme ratio, 10 times over."""

    def __init__(self):
        self.calls = 0

    def uniform(self, low, high):
        self.calls += 1
        return high * 1e6 if self.calls % 2 else high

    def integers(self, low, high):  # pragma: no cover - never reached
        raise AssertionError("no attempt should fit")


@pytest.mark.parametrize(("width", "height"), SHAPES + [(101, 77), (77, 101), (641, 480)])
@pytest.mark.parametrize("s", [1, 3, 5, 7, 9, 10])
def test_crop_box_is_torchvision_random_resized_crop_with_scale_s_over_10(width, height, s):
    for k in range(30):
        box = crop_box(width, height, s / 10, np.random.default_rng(k))
        expected, _ = reference_crop(width, height, (s / 10, s / 10), np.random.default_rng(k))
        assert box == expected, (width, height, s, k)


@pytest.mark.parametrize("s", [7, 8, 9])
def test_full_side_crops_are_rare_on_a_4_3_image(s):
    # With crops of s/10 of the area and ratios in [3/4, 4/3], a box reaches the full width or
    # height mostly through the centre-crop fallback (10 misses). Clipping the ratio instead makes
    # such boxes 38-82% of draws at scales 7-9.
    width, height, n = 400, 300, 3000
    ours = [crop_boxes(width, height, [s], seed)[0] for seed in range(n)]
    rng = np.random.default_rng(2024)
    reference = [reference_crop(width, height, (s / 10, s / 10), rng)[0] for _ in range(n)]

    def full_side(boxes):
        return np.mean([(r - l) == width or (b - t) == height for l, t, r, b in boxes])

    p_ours, p_ref = full_side(ours), full_side(reference)
    # About 1.8%, 3.6% and 17.7% at scales 7, 8 and 9 (10^5 reference draws).
    assert p_ours < 0.25 and p_ref < 0.25
    # Two binomial estimates with p <= 0.2 and n = 3000: their difference has sd <= 0.011.
    assert abs(p_ours - p_ref) < 0.045, (s, p_ours, p_ref)


@pytest.mark.parametrize(("width", "height"), SHAPES + [(101, 77), (7, 5), (1, 1), (2, 300)])
def test_boxes_are_integer_and_lie_inside_the_image(width, height):
    fallback = centre_fallback(width, height)
    for seed in range(30):
        for s, box in zip(ALL_SCALES, crop_boxes(width, height, ALL_SCALES, seed)):
            left, upper, right, lower = box
            assert all(float(v).is_integer() for v in box)
            assert 0 <= left < right <= width and 0 <= upper < lower <= height
            w, h = right - left, lower - upper
            target = s / 10 * width * height
            # An accepted draw rounds sqrt(A r) and sqrt(A / r), whose product is the target area.
            accepted = (w - 0.5) * (h - 0.5) <= target + 1e-9 <= (w + 0.5) * (h + 0.5) + 2e-9
            # ... and its ratio w/h, within rounding of those two, lies in [3/4, 4/3].
            accepted = accepted and (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / max(h - 0.5, 1e-9) >= 3 / 4
            assert accepted or tuple(box) == fallback, (width, height, s, box)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        # Wider than 4/3: full height, width round(h * 4/3), centred with floor offsets.
        (300, 20, (136, 0, 163, 20)),
        (64, 36, (8, 0, 56, 36)),
        # Taller than 3/4: full width, height round(w / (3/4)), centred.
        (20, 300, (0, 136, 20, 163)),
        (35, 120, (0, 36, 35, 83)),
    ],
)
def test_no_fitting_draw_falls_back_to_the_centre_crop(width, height, expected):
    assert centre_fallback(width, height) == expected
    # A box of 10% of such an image's area never fits at a ratio in [3/4, 4/3] for the first two;
    # the last two also reach the fallback at larger scales.
    scales = [1, 5, 10] if max(width / height, height / width) > 10 else [10]
    for seed in range(10):
        assert crop_boxes(width, height, scales, seed) == [expected] * len(scales)
    assert crop_box(width, height, 1.0, FailingRng()) == expected


def test_the_fallback_inside_the_ratio_range_is_the_whole_image():
    assert crop_box(400, 300, 0.9, FailingRng()) == (0, 0, 400, 300)
    assert crop_box(50, 50, 0.5, FailingRng()) == (0, 0, 50, 50)


@pytest.mark.parametrize(("width", "height"), [(100, 100), (40, 40), (300, 50), (40, 200)])
def test_the_largest_scale_of_a_square_or_elongated_image_is_fixed(width, height):
    # A square image only fits its whole self at area 1; an image outside the ratio range never
    # fits, so it always gets the centre crop.
    expected = centre_fallback(width, height)
    for seed in range(20):
        assert crop_boxes(width, height, [10], seed) == [expected]


def test_boxes_are_determined_by_the_seed_and_each_scale_alone():
    boxes = crop_boxes(120, 80, ALL_SCALES, seed=7)
    assert boxes == crop_boxes(120, 80, ALL_SCALES, seed=7)
    assert boxes != crop_boxes(120, 80, ALL_SCALES, seed=8)
    # The box of one scale does not depend on which other scales are asked for.
    assert crop_boxes(120, 80, [3, 8], seed=7) == [boxes[2], boxes[7]]
    assert crop_boxes(120, 80, [8, 3], seed=7) == [boxes[7], boxes[2]]
    assert crop_box(120, 80, 0.4, np.random.default_rng(3)) == crop_box(120, 80, 0.4, np.random.default_rng(3))


def test_positions_and_ratios_are_spread_over_their_ranges():
    ratios, lefts = [], []
    for seed in range(300):
        left, upper, right, lower = crop_box(200, 200, 0.3, np.random.default_rng(seed))
        ratios.append(math.log((right - left) / (lower - upper)))
        lefts.append(left / (200 - (right - left)))
    low, high = (math.log(v) for v in ASPECT_RATIO_RANGE)
    assert min(ratios) < low + 0.1 * (high - low) and max(ratios) > high - 0.1 * (high - low)
    assert abs(np.mean(ratios)) < 0.05
    assert min(lefts) < 0.1 and max(lefts) > 0.9


def test_crop_seed_depends_on_the_pixels_and_the_seed_only():
    array = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    assert crop_seed(0, image) == crop_seed(0, Image.fromarray(array.copy()))
    assert crop_seed(0, image) != crop_seed(1, image)
    array[5, 5, 0] ^= 1
    assert crop_seed(0, image) != crop_seed(0, Image.fromarray(array))


def test_crop_pixels_resize_the_box_to_the_input_and_normalise():
    spec = PixelSpec(input_size=(8, 6), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    image = Image.new("RGB", (40, 20), (255, 0, 51))
    pixels = crop_pixels(image, spec, (3.5, 2.0, 20.0, 15.25))
    assert pixels.shape == (3, 8, 6)
    expected = torch.tensor([(1 - 0.5) / 0.5, (0 - 0.25) / 0.25, 51 / 255])
    assert torch.allclose(pixels.mean(dim=(1, 2)), expected, atol=1e-6)
