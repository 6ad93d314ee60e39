"""Pixels for an image encoder.

Single-scale features use the encoder's own preprocessing (the `CLIPImageProcessor` of a
transformers model: resize the shortest edge, centre crop, rescale, normalise). Multi-scale crops
are cut from the original image and resized straight to the encoder's input size (a whole crop, no
centre crop, as LGCLIP does), then rescaled and normalised with the processor's own constants. PIL
does the crop and the resize in one step from a float box; no torchvision.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from synthshot.features.multiscale import crop_boxes, crop_seed

# The processor settings that decide its output; the rest of `to_dict()` is bookkeeping.
PROCESSOR_KEYS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


@dataclass(frozen=True)
class PixelSpec:
    """How a crop becomes encoder input: size (height, width), PIL resample filter, rescale factor
    and the per-channel mean and std."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    resample: int = int(Image.Resampling.BICUBIC)

    def fingerprint(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "rescale_factor": float(self.rescale_factor),
            "resample": int(self.resample),
        }


def spec_from_processor(processor, input_size: tuple[int, int]) -> PixelSpec:
    """The crop pixel spec that matches a transformers image processor's constants."""
    normalize = getattr(processor, "do_normalize", True)
    return PixelSpec(
        input_size=tuple(input_size),
        mean=tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
        rescale_factor=float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0,
        resample=int(getattr(processor, "resample", Image.Resampling.BICUBIC)),
    )


def processor_fingerprint(processor) -> dict:
    """The settings of a transformers image processor that decide its output, JSON-ready."""
    settings = processor.to_dict()
    out = {}
    for key in PROCESSOR_KEYS:
        value = settings.get(key)
        if isinstance(value, enum.Enum):
            value = value.value
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def processor_pixels(processor, images: Sequence[Image.Image]) -> Tensor:
    """Single scale: the processor's own output, [N, 3, H, W] float32."""
    return processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]


def crop_pixels(image: Image.Image, spec: PixelSpec, box: tuple[float, float, float, float] | None = None) -> Tensor:
    """One crop (the whole image if `box` is None) resized to the input size and normalised: [3, H, W]."""
    height, width = spec.input_size
    resized = image.convert("RGB").resize((width, height), resample=spec.resample, box=box)
    array = np.asarray(resized, dtype=np.float32) * np.float32(spec.rescale_factor)
    array = (array - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def multiscale_pixels(image: Image.Image, spec: PixelSpec, scales: Sequence[int], seed: int) -> Tensor:
    """The crops of one image, one per scale in the order given: [S, 3, H, W]."""
    image = image.convert("RGB")
    boxes = crop_boxes(image.width, image.height, scales, crop_seed(seed, image))
    return torch.stack([crop_pixels(image, spec, box) for box in boxes])
