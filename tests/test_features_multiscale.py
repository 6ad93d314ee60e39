"""LGCLIP's multi-scale math against its formulas: weights s/sum(s), the weighted combination with
renormalisation, and seeded crop boxes covering s/10 of the image."""

from __future__ import annotations

import math
import random

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


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_boxes_cover_s_over_10_of_the_image_and_lie_inside_it(width, height):
    low, high = ASPECT_RATIO_RANGE
    for seed in range(20):
        for s, (left, upper, right, lower) in zip(ALL_SCALES, crop_boxes(width, height, ALL_SCALES, seed)):
            w, h = right - left, lower - upper
            assert w * h / (width * height) == pytest.approx(s / 10, rel=1e-9)
            assert 0 <= left and 0 <= upper and right <= width + 1e-9 and lower <= height + 1e-9
            # The ratio is drawn in [3/4, 4/3] and clipped to where a box of that area fits.
            fit_low, fit_high = (s / 10) * width / height, width / ((s / 10) * height)
            ratio = w / h
            assert fit_low - 1e-9 <= ratio <= fit_high + 1e-9
            assert low - 1e-9 <= ratio <= high + 1e-9 or math.isclose(ratio, fit_low) or math.isclose(ratio, fit_high)


@pytest.mark.parametrize(("width", "height"), SHAPES)
def test_the_largest_scale_is_the_whole_image(width, height):
    assert crop_boxes(width, height, [10], seed=123) == [(0.0, 0.0, float(width), float(height))]


def test_boxes_are_determined_by_the_seed_and_each_scale_alone():
    boxes = crop_boxes(120, 80, ALL_SCALES, seed=7)
    assert boxes == crop_boxes(120, 80, ALL_SCALES, seed=7)
    assert boxes != crop_boxes(120, 80, ALL_SCALES, seed=8)
    # The box of one scale does not depend on which other scales are asked for.
    assert crop_boxes(120, 80, [3, 8], seed=7) == [boxes[2], boxes[7]]


def test_positions_and_ratios_are_spread_over_their_ranges():
    ratios, lefts = [], []
    for seed in range(300):
        left, upper, right, lower = crop_box(200, 200, 0.3, random.Random(seed))
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
