"""Random augmentation of each IP-Adapter input image (DIPSY Sec. 3.4), with PIL only.

Each of the two conditioning images (positive and negative) is augmented independently, so that
the adapters never see the same few-shot image twice in exactly the same way:

1. horizontal flip with probability 0.5;
2. a random square crop of side min(W, H) at a random position;
3. a rotation by an angle uniform in [-20°, 20°] about the centre, without expanding the canvas
   (PIL's default nearest-neighbour resampling, as the official `Image.rotate(angle)`; corners
   filled black);
4. a centre crop of side floor(side / √2) at offset floor((side - crop) / 2) on each axis, which
   removes the black corners.

Step 4 follows the official code, `CenterCrop(int(max(size) / sqrt(2)))` applied after
`RandomRotation(expand=False)` to the square crop: the sizes are those of the image *at that point*,
the side x side square, so max(W, H) = side. (Using the original image's larger side instead would
ask for a crop larger than the square on non-square inputs and pad it with black.) A centred
square of side side/√2 stays inside the rotated square whatever the angle, so no fill shows. The
offsets are floored as in the official code (torchvision's `CenterCrop` would round instead: a
one-pixel shift for some sizes).

Sampling (`sample_augment_params`) is kept apart from applying (`apply_augment`) so that both can be
tested on their own, and the draw depends only on the rng state and the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from synthshot.errors import DataError

FLIP_PROBABILITY = 0.5
MAX_ROTATION_DEGREES = 20.0


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation. The crop box is in the (possibly flipped) input's pixels;
    `angle` is in degrees, counter-clockwise (PIL's and torchvision's convention)."""

    flip: bool
    crop_left: int
    crop_top: int
    crop_size: int
    angle: float
    center_crop_size: int


def _check_size(width: int, height: int) -> None:
    if min(width, height) < 2:
        raise DataError(
            f"an IP-Adapter input image of {width}x{height} pixels is too small to augment: "
            "use images of at least 2x2 pixels"
        )


def sample_augment_params(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    flip_probability: float = FLIP_PROBABILITY,
    max_angle: float = MAX_ROTATION_DEGREES,
) -> AugmentParams:
    """Draw flip, crop position and angle for a `width` x `height` image from `rng`."""
    _check_size(width, height)
    side = min(width, height)
    flip = bool(rng.random() < flip_probability)
    crop_left = int(rng.integers(0, width - side + 1))
    crop_top = int(rng.integers(0, height - side + 1))
    angle = float(rng.uniform(-max_angle, max_angle))
    return AugmentParams(
        flip=flip,
        crop_left=crop_left,
        crop_top=crop_top,
        crop_size=side,
        angle=angle,
        center_crop_size=int(side / math.sqrt(2)),
    )


def apply_augment(image: Image.Image, params: AugmentParams) -> Image.Image:
    """Apply one draw: flip, square crop, rotation without expansion, centre crop."""
    width, height = image.size
    right, bottom = params.crop_left + params.crop_size, params.crop_top + params.crop_size
    if params.crop_left < 0 or params.crop_top < 0 or right > width or bottom > height:
        raise DataError(
            f"crop box ({params.crop_left}, {params.crop_top}, {right}, {bottom}) lies outside the "
            f"{width}x{height} image: draw the parameters for this image's size"
        )
    if not 1 <= params.center_crop_size <= params.crop_size:
        raise DataError(
            f"centre crop of {params.center_crop_size} px does not fit the "
            f"{params.crop_size} px square crop"
        )

    if params.flip:
        image = ImageOps.mirror(image)
    image = image.crop((params.crop_left, params.crop_top, right, bottom))
    if params.angle != 0:
        # PIL's default resampling (NEAREST), as the official `Image.rotate(angle)`.
        image = image.rotate(params.angle, resample=Image.Resampling.NEAREST, expand=False)
    # The official centre crop's offsets: floor((size - crop) / 2) on each axis.
    side, crop = params.crop_size, params.center_crop_size
    offset = (side - crop) // 2
    return image.crop((offset, offset, offset + crop, offset + crop))


def augment_ip_image(
    image: Image.Image, rng: np.random.Generator, *, enabled: bool = True
) -> Image.Image:
    """Augment one IP-Adapter input image; the same rng state gives the same result.

    With `enabled=False` (the `generation.augment=false` ablation) the image is returned unchanged
    and `rng` is not advanced.
    """
    if not enabled:
        return image
    params = sample_augment_params(rng, *image.size)
    return apply_augment(image, params)
