"""LGCLIP's multi-scale image feature (DESIGN.md section 2):

    for s in scales (default 1..10): a crop covering s/10 of the image area, at a seeded random
    position and aspect ratio, resized to the encoder's input, encoded and L2-normalised -> z_s
    F = normalise(sum_s w_s z_s),  w_s = s / sum(scales)   (s/55 for 1..10)

Crop geometry: the box's aspect ratio w/h is drawn log-uniformly from ASPECT_RATIO_RANGE (3/4 to
4/3, the range torchvision's RandomResizedCrop uses) and then clipped to the ratios at which a box of
that area fits inside the image, [a*W/H, W/(a*H)] for area fraction a; so s = 10 is always the
whole image. Boxes are in float pixel coordinates (PIL resizes from a float box), which makes their
area exactly a*W*H. Each (image, scale) has its own random stream, derived from the seed and the
image's pixels: a crop never depends on the batch, the file's path, the order of the files or which
other scales are asked for.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

import torch
from PIL import Image
from torch import Tensor

from synthshot.errors import ConfigError

ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
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
    width: float,
    height: float,
    area: float,
    rng: random.Random,
    aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE,
) -> Box:
    """A box of area `area * width * height` inside the image, at a random position and aspect ratio.

    The ratio w/h is log-uniform in `aspect_ratio_range`, clipped to [area*W/H, W/(area*H)] where
    a box of that area fits.
    """
    if not 0 < area <= 1:
        raise ValueError(f"crop area fraction must be in (0, 1], got {area}")
    low, high = aspect_ratio_range
    target = area * width * height
    ratio = math.exp(rng.uniform(math.log(low), math.log(high)))
    ratio = min(max(ratio, area * width / height), width / (area * height))
    w = min(math.sqrt(target * ratio), width)
    h = min(math.sqrt(target / ratio), height)
    # Both draws happen whatever the clipping, so each scale's stream has a fixed shape.
    left = rng.uniform(0.0, width - w)
    upper = rng.uniform(0.0, height - h)
    return (left, upper, left + w, upper + h)


def crop_boxes(width: int, height: int, scales: Sequence[int], seed: int) -> list[Box]:
    """One box per scale (in the order given), each covering s/10 of the image; `seed` is the
    image's crop seed (`crop_seed`)."""
    check_scales(scales)
    return [crop_box(width, height, s / 10, random.Random(_derive(seed, s))) for s in scales]
