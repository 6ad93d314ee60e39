"""IP-Adapter input augmentation (DIPSY Sec. 3.4): flip, square crop, rotation, centre crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from synthshot.errors import DataError
from synthshot.generation.augment import (
    MAX_ROTATION_DEGREES,
    AugmentParams,
    apply_augment,
    augment_ip_image,
    sample_augment_params,
)


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A noise image, so that any change of flip, crop or angle changes the pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def identity_params(side: int, *, flip: bool = False, left: int = 0, top: int = 0) -> AugmentParams:
    return AugmentParams(
        flip=flip, crop_left=left, crop_top=top, crop_size=side, angle=0.0, center_crop_size=side
    )


def test_same_seed_gives_the_same_image():
    image = make_image(64, 48)
    first = augment_ip_image(image, np.random.default_rng(123))
    second = augment_ip_image(image, np.random.default_rng(123))
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_different_seeds_give_different_images():
    image = make_image(64, 48)
    outputs = {augment_ip_image(image, np.random.default_rng(seed)).tobytes() for seed in range(5)}
    assert len(outputs) == 5


def test_params_depend_only_on_rng_state_and_size():
    assert sample_augment_params(np.random.default_rng(7), 80, 60) == sample_augment_params(
        np.random.default_rng(7), 80, 60
    )


def test_flip_frequency_is_about_one_half():
    rng = np.random.default_rng(0)
    flips = [sample_augment_params(rng, 32, 32).flip for _ in range(4000)]
    # Binomial(4000, 0.5) has standard deviation ~0.008: 0.03 is almost 4 sigma.
    assert abs(np.mean(flips) - 0.5) < 0.03


def test_rotation_angles_are_within_twenty_degrees_and_spread():
    rng = np.random.default_rng(1)
    angles = np.array([sample_augment_params(rng, 32, 32).angle for _ in range(2000)])
    assert MAX_ROTATION_DEGREES == 20.0
    assert np.all(np.abs(angles) <= 20.0)
    assert angles.min() < -18 and angles.max() > 18  # uniform over the whole range
    assert abs(angles.mean()) < 1.0


@pytest.mark.parametrize("width,height", [(64, 64), (100, 40), (40, 100), (33, 77), (2, 5)])
def test_output_is_a_square_of_side_floor_side_over_sqrt2(width, height):
    side = min(width, height)
    expected = math.floor(side / math.sqrt(2))
    for seed in range(5):
        params = sample_augment_params(np.random.default_rng(seed), width, height)
        assert params.crop_size == side
        assert params.center_crop_size == expected
        out = augment_ip_image(make_image(width, height), np.random.default_rng(seed))
        assert out.size == (expected, expected)
        assert out.mode == "RGB"


@pytest.mark.parametrize("width,height", [(100, 40), (40, 100), (50, 50)])
def test_square_crop_lies_inside_the_image_and_covers_every_position(width, height):
    rng = np.random.default_rng(2)
    lefts, tops = set(), set()
    for _ in range(1000):
        params = sample_augment_params(rng, width, height)
        assert 0 <= params.crop_left and params.crop_left + params.crop_size <= width
        assert 0 <= params.crop_top and params.crop_top + params.crop_size <= height
        lefts.add(params.crop_left)
        tops.add(params.crop_top)
    assert lefts == set(range(width - min(width, height) + 1))
    assert tops == set(range(height - min(width, height) + 1))


def test_pure_flip_equals_mirror():
    image = make_image(40, 40)
    out = apply_augment(image, identity_params(40, flip=True))
    assert np.array_equal(np.asarray(out), np.asarray(ImageOps.mirror(image)))


def test_no_op_params_return_the_same_pixels():
    image = make_image(40, 40)
    out = apply_augment(image, identity_params(40))
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_square_crop_takes_the_given_window_of_a_non_square_image():
    image = make_image(90, 30)
    out = apply_augment(image, identity_params(30, left=17))
    assert np.array_equal(np.asarray(out), np.asarray(image)[:, 17:47])


def test_flip_comes_before_the_crop():
    image = make_image(90, 30)
    out = apply_augment(image, identity_params(30, flip=True, left=0))
    # The left window of the mirrored image is the mirrored right window of the original.
    expected = np.asarray(image)[:, 60:90][:, ::-1]
    assert np.array_equal(np.asarray(out), expected)


def test_rotation_matches_pil_rotate_about_the_centre_without_expansion():
    image = make_image(40, 40)
    params = AugmentParams(
        flip=False, crop_left=0, crop_top=0, crop_size=40, angle=12.5, center_crop_size=40
    )
    out = apply_augment(image, params)
    # PIL's default resampling (NEAREST), as the official code's `Image.rotate(angle)`.
    expected = image.rotate(12.5)
    assert out.size == (40, 40)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize("side", [10, 23, 36, 51, 64])
def test_centre_crop_offset_is_the_floor_of_the_margin_over_two(side):
    # For these sides the margin side - int(side/sqrt 2) is 3 mod 4, so half of it ends in .5 and
    # Python's round() goes up: rounding would shift the crop by one pixel; the official code
    # takes the floor.
    crop = int(side / math.sqrt(2))
    assert (side - crop) % 4 == 3
    image = make_image(side, side)
    params = AugmentParams(
        flip=False, crop_left=0, crop_top=0, crop_size=side, angle=0.0, center_crop_size=crop
    )
    offset = (side - crop) // 2
    expected = np.asarray(image)[offset : offset + crop, offset : offset + crop]
    assert np.array_equal(np.asarray(apply_augment(image, params)), expected)


def official_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The official DIPSY sequence written with plain PIL calls, drawing from `rng` in synthshot's
    order (flip, crop left, crop top, angle): flip with p=0.5, random square crop of side
    min(W, H), `Image.rotate(angle)` (NEAREST, no expand), centre crop of side
    int(max(W, H) / sqrt 2) at floor offsets."""
    width, height = image.size
    side = min(width, height)
    flip = rng.random() < 0.5
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    angle = float(rng.uniform(-20.0, 20.0))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.crop((left, top, left + side, top + side))
    image = image.rotate(angle)
    width, height = image.size
    crop = int(max(width, height) / math.sqrt(2))
    left, top = (width - crop) // 2, (height - crop) // 2
    return image.crop((left, top, left + crop, top + crop))


@pytest.mark.parametrize(
    "width,height", [(64, 64), (63, 63), (80, 60), (61, 47), (47, 61), (100, 37), (24, 31), (10, 10)]
)
def test_pixel_identical_to_the_official_sequence_given_the_same_draws(width, height):
    for seed in range(40):
        image = make_image(width, height, seed=seed)
        ours = augment_ip_image(image, np.random.default_rng(seed))
        official = official_augment(image, np.random.default_rng(seed))
        assert ours.size == official.size
        assert np.array_equal(np.asarray(ours), np.asarray(official)), (width, height, seed)


def test_centre_crop_removes_the_black_rotation_fill():
    white = Image.new("RGB", (120, 80), (255, 255, 255))
    rng = np.random.default_rng(3)
    for _ in range(50):
        out = np.asarray(augment_ip_image(white, rng))
        assert out.min() == 255


def test_rotated_corners_are_black_before_the_centre_crop():
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    params = AugmentParams(
        flip=False, crop_left=0, crop_top=0, crop_size=40, angle=20.0, center_crop_size=40
    )
    out = np.asarray(apply_augment(white, params))
    assert out[0, 0].tolist() == [0, 0, 0]


def test_disabled_returns_the_image_unchanged_and_leaves_the_rng_alone():
    image = make_image(50, 30)
    rng = np.random.default_rng(4)
    state = rng.bit_generator.state
    assert augment_ip_image(image, rng, enabled=False) is image
    assert rng.bit_generator.state == state


def test_the_positive_and_negative_draws_are_independent():
    rng = np.random.default_rng(5)
    image = make_image(64, 64)
    positive = augment_ip_image(image, rng)
    negative = augment_ip_image(image, rng)
    assert positive.tobytes() != negative.tobytes()


def test_crop_outside_the_image_is_refused():
    with pytest.raises(DataError, match="outside"):
        apply_augment(make_image(30, 30), identity_params(30, left=5))


def test_tiny_image_is_refused():
    with pytest.raises(DataError, match="too small"):
        sample_augment_params(np.random.default_rng(0), 1, 10)
