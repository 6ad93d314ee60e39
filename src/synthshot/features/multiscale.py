"""LGCLIP's multi-scale image feature (DESIGN.md section 2):

    for s in scales (default 1..10): a crop of about s/10 of the image area, at a seeded random
    position and aspect ratio, resized to the encoder's input, encoded and L2-normalised -> z_s
    F = normalise(sum_s w_s z_s),  w_s = s / sum(scales)   (s/55 for 1..10)

Crop geometry: torchvision's `RandomResizedCrop.get_params` with scale (s/10, s/10) and ratio
ASPECT_RATIO_RANGE (3/4 to 4/3), as the official code, reimplemented on a numpy generator. Up to 10
attempts draw an area fraction and a log-uniform ratio r and round w = sqrt(A r), h = sqrt(A / r);
the first box that fits is placed at a uniform integer position; after 10 misses the box is the
centre crop of the image clipped to the ratio range (the whole image when W/H is in range). So a
box's area is s/10 of the image up to rounding, except for fallbacks, and s = 10 is the whole image
only for images whose ratio is in range (up to rounding). Each (image, scale) has its own random
stream, derived from the seed and the image's pixels: a crop never depends on the batch, the
file's path, the order of the files or which other scales are asked for.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from synthshot.errors import ConfigError

ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
# Recorded in the feature cache's settings, so caches made with another crop sampler are recomputed.
CROP_SAMPLING = "random-resized-crop"
ALL_SCALES = tuple(range(1, 11))

Box = tuple[float, float, float, float]  # (left, upper, right, lower), PIL's order


def check_scales(scales: Sequence[int]) -> list[int]:
    """Scales are distinct integers in 1..10 (crop areas s/10); returned sorted."""
    values = list(scales)
    if not values or any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 10 for s in values):
        raise ConfigError(f"features.scales must be distinct integers in 1..10, got {values}")
    if len(set(values)) != len(values):
        raise ConfigError(f"features.scales must be distinct integers in 1..10, got {values} (repeated)")
    return sorted(values)


def scale_weights(scales: Sequence[int]) -> Tensor:
    """w_s = s / sum(scales): larger crops weigh more; s/55 for the paper's 1..10."""
    scales = check_scales(scales)
    values = torch.tensor(scales, dtype=torch.float64)
    return (values / values.sum()).to(torch.float32)


def combine_scales(embeddings: Tensor, scales: Sequence[int]) -> Tensor:
    """F = normalise(sum_s w_s * normalise(z_s)) for embeddings [N, S, D] (scales in the order of
    `scales`); returns [N, D] in float32."""
    scales = list(scales)
    if embeddings.ndim != 3 or embeddings.shape[1] != len(scales):
        raise ValueError(f"embeddings must be [N, {len(scales)}, D], got {tuple(embeddings.shape)}")
    z = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    order = sorted(range(len(scales)), key=lambda i: scales[i])
    weights = torch.empty(len(scales))
    weights[order] = scale_weights(scales)
    combined = (z * weights[None, :, None]).sum(dim=1)
    return torch.nn.functional.normalize(combined, dim=-1)


def _derive(*parts: object) -> int:
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def crop_seed(seed: int, image: Image.Image) -> int:
    """The seed of an image's crops: sha256 of the base seed and the decoded pixels (mode, size,
    bytes), so identical images get identical crops wherever they come from."""
    digest = hashlib.sha256(f"synthshot-crops:{seed}:{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest()[:8], "big")


def crop_box(
    width: int,
    height: int,
    area: float | tuple[float, float],
    rng: np.random.Generator,
    aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE,
) -> Box:
    """A box of a random fraction `area` of the image (a number, or a (low, high) range drawn
    uniformly) at a random position and aspect ratio: torchvision's `RandomResizedCrop.get_params`
    drawing from `rng`, in integer pixels (as floats).

    Each of up to 10 attempts draws the area fraction, then log(w/h) uniformly in the log of
    `aspect_ratio_range`, and rounds w = sqrt(A r), h = sqrt(A / r); the first box that fits is
    placed at a uniform top, then left. If none fits, the centre crop: the whole image if W/H is in
    the ratio range, else the full short side with the long one cut to the nearest ratio bound.
    """
    low_area, high_area = (area, area) if isinstance(area, (int, float)) else area
    if not 0 < low_area <= high_area <= 1:
        raise ValueError(f"crop area fraction must be in (0, 1], got {area}")
    low, high = aspect_ratio_range
    image_area = width * height
    log_low, log_high = math.log(low), math.log(high)
    for _ in range(10):
        target = image_area * float(rng.uniform(low_area, high_area))
        ratio = math.exp(float(rng.uniform(log_low, log_high)))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return (float(left), float(top), float(left + w), float(top + h))
    in_ratio = float(width) / float(height)
    if in_ratio < min(low, high):
        w = width
        h = int(round(w / min(low, high)))
    elif in_ratio > max(low, high):
        h = height
        w = int(round(h * max(low, high)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (float(left), float(top), float(left + w), float(top + h))


def crop_boxes(width: int, height: int, scales: Sequence[int], seed: int) -> list[Box]:
    """One box per scale (in the order given), each of about s/10 of the image; `seed` is the
    image's crop seed (`crop_seed`)."""
    check_scales(scales)
    return [crop_box(width, height, s / 10, np.random.default_rng(_derive(seed, s))) for s in scales]
