"""Training data for fine-tuning: the real few-shot images and the synthetic set, in balanced
batches with as many real as synthetic images, and the training augmentation.

* Labels come from what is stored: the few-shot split (class -> files) and the generation
  manifest, whose records name each image's class (`class_name`); never from paths.
* An epoch is one pass over the larger set; the smaller one (usually the real shots) is cycled,
  each cycle in a new order (DIPSY: "real replicated"). The order of epoch e is drawn from
  (seed, e) alone, and each image's augmentation from (seed, e, position), so an epoch is the same
  whatever the number of workers or processes, and a resumed run sees the data a straight run saw.
* The augmentation follows the peers (DataDream / DISEF): random resized crop (area 0.25-1),
  horizontal flip, RandAugment (2 ops, magnitude 9 of 30), colour jitter (p 0.8), grayscale,
  blur and solarisation (p 0.2 each), written with PIL and numpy only (no torchvision).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from synthshot.data.folders import load_rgb
from synthshot.errors import DataError

REAL, SYNTHETIC = 0, 1  # stream tags in seeds


# ------------------------------------------------------------------------------------ the sets
@dataclass
class TrainImages:
    """Image files with labels indexing the classifier's classes."""

    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def counts(self, num_classes: int) -> list[int]:
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes).tolist()


def real_images(split: dict[str, list[Path]], classes: list[str]) -> TrainImages:
    """The few-shot images, labelled by their class's position in `classes`."""
    index = {name: i for i, name in enumerate(classes)}
    images = TrainImages()
    for name, files in split.items():
        for path in files:
            images.files.append(Path(path))
            images.labels.append(index[name])
    return images


def check_training_sets(real: TrainImages, synthetic: TrainImages, classes: list[str], lam: float,
                        where: Path) -> None:
    """Each set the loss weighs must cover every class: training on synthetic images of some
    classes only would bias the classifier without saying so."""
    for weight, images, what, fix in (
        (lam, real, "real few-shot", "check the few-shot split"),
        (1.0 - lam, synthetic, "synthetic",
         f"generate them first (`synthshot generate`, output {where}), or set finetune.lam=1 to train on real images only"),
    ):
        if weight == 0:
            continue
        if not len(images):
            raise DataError(f"finetune.lam={lam:g} gives the {what} images weight {weight:g}, but there are none: {fix}")
        missing = [classes[i] for i, n in enumerate(images.counts(len(classes))) if n == 0]
        if missing:
            raise DataError(
                f"the {what} images have none of the classes {', '.join(repr(c) for c in missing[:8])}"
                f"{' ...' if len(missing) > 8 else ''}: {fix}"
            )


# ------------------------------------------------------------------------------ epoch order
def _stream(count: int, length: int, seed: int, epoch: int, tag: int) -> list[int | None]:
    """`length` indices into a set of `count` images: fresh permutations, one after another."""
    if count == 0:
        return [None] * length
    rng = np.random.default_rng([seed, epoch, tag])
    cycles = math.ceil(length / count)
    return [int(i) for i in np.concatenate([rng.permutation(count) for _ in range(cycles)])[:length]]


def epoch_plan(num_real: int, num_synthetic: int, epoch: int, seed: int,
               length: int | None = None) -> list[tuple[int | None, int | None]]:
    """The (real index, synthetic index) pairs of one epoch, in order: one pass over the larger
    set, the smaller cycled (or `length` pairs, both sets cycled in fresh permutations). A set of
    size 0 gives None in its place (single-set training)."""
    length = max(num_real, num_synthetic) if length is None else length
    return list(zip(_stream(num_real, length, seed, epoch, REAL), _stream(num_synthetic, length, seed, epoch, SYNTHETIC)))


# ----------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class AugmentSettings:
    """The training augmentation (defaults: DataDream's, which follows DISEF)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9  # of 30, as torchvision's RandAugment
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.2
    blur_radius: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.2

    @classmethod
    def from_config(cls, settings) -> AugmentSettings:
        return cls(
            crop_scale=tuple(settings.crop_scale),
            randaugment_ops=settings.randaugment_ops,
            randaugment_magnitude=settings.randaugment_magnitude,
            color_jitter_prob=settings.color_jitter_prob,
            grayscale_prob=settings.grayscale_prob,
            blur_prob=settings.blur_prob,
            solarize_prob=settings.solarize_prob,
        )


def random_resized_crop_box(width: int, height: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop covering a random fraction `scale` (a range) of the
    area with a random aspect ratio (log-uniform in `ratio`): torchvision's RandomResizedCrop, the
    same sampling as the multi-scale features (`features.multiscale.crop_box`)."""
    from synthshot.features.multiscale import crop_box

    left, top, right, bottom = crop_box(width, height, tuple(scale), rng, tuple(ratio))
    return int(left), int(top), int(right), int(bottom)


def _affine(image: Image.Image, matrix: tuple) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))


def _hue_shift(image: Image.Image, shift: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def randaugment_op(image: Image.Image, name: str, magnitude: int, sign: float) -> Image.Image:
    """One RandAugment operation at `magnitude` (0..30, torchvision's scale); `sign` is +1 or -1
    for the operations that go both ways."""
    m = magnitude / 30.0
    width, height = image.size
    if name == "identity":
        return image
    if name == "shear_x":
        return _affine(image, (1, sign * 0.3 * m, 0, 0, 1, 0))
    if name == "shear_y":
        return _affine(image, (1, 0, 0, sign * 0.3 * m, 1, 0))
    if name == "translate_x":
        return _affine(image, (1, 0, sign * 150 / 331 * m * width, 0, 1, 0))
    if name == "translate_y":
        return _affine(image, (1, 0, 0, 0, 1, sign * 150 / 331 * m * height))
    if name == "rotate":
        return image.rotate(sign * 30 * m, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    if name in ("brightness", "color", "contrast", "sharpness"):
        enhancer = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
                    "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[name]
        return enhancer(image).enhance(1.0 + sign * 0.9 * m)
    if name == "posterize":
        return ImageOps.posterize(image, int(8 - round(4 * m)))
    if name == "solarize":
        return ImageOps.solarize(image, round(255 * (1 - m)))
    if name == "autocontrast":
        return ImageOps.autocontrast(image)
    if name == "equalize":
        return ImageOps.equalize(image)
    raise ValueError(f"unknown RandAugment operation {name!r}")


RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                   "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")


class TrainTransform:
    """PIL image + generator -> normalised tensor [3, H, W] at the encoder's input size."""

    def __init__(self, processor, settings: AugmentSettings | None):
        self.processor = processor
        self.settings = settings
        crop = processor.crop_size
        self.size = (int(crop["width"]), int(crop["height"]))
        self.mean = np.asarray(processor.image_mean, dtype=np.float32)
        self.std = np.asarray(processor.image_std, dtype=np.float32)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        s = self.settings
        if s is None:
            # No augmentation: exactly the preprocessing used at evaluation.
            return self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        box = random_resized_crop_box(*image.size, s.crop_scale, s.crop_ratio, rng)
        image = image.resize(self.size, resample=Image.Resampling.BICUBIC, box=box)
        if rng.random() < s.flip_prob:
            image = ImageOps.mirror(image)
        for _ in range(s.randaugment_ops):
            name = RANDAUGMENT_OPS[int(rng.integers(len(RANDAUGMENT_OPS)))]
            image = randaugment_op(image, name, s.randaugment_magnitude, 1.0 if rng.random() < 0.5 else -1.0)
        if rng.random() < s.color_jitter_prob:
            image = self.color_jitter(image, rng)
        if rng.random() < s.grayscale_prob:
            image = image.convert("L").convert("RGB")
        if rng.random() < s.blur_prob:
            image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*s.blur_radius)))
        if rng.random() < s.solarize_prob:
            image = ImageOps.solarize(image, 128)
        return self.to_tensor(image)

    def color_jitter(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Brightness, contrast, saturation and hue, each by a random factor, in random order."""
        s = self.settings
        for which in rng.permutation(4):
            if which == 0 and s.brightness:
                image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - s.brightness, 1 + s.brightness))
            elif which == 1 and s.contrast:
                image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - s.contrast, 1 + s.contrast))
            elif which == 2 and s.saturation:
                image = ImageEnhance.Color(image).enhance(rng.uniform(1 - s.saturation, 1 + s.saturation))
            elif which == 3 and s.hue:
                image = _hue_shift(image, rng.uniform(-s.hue, s.hue))
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        array = (np.asarray(image, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------- datasets
class PairedImages(torch.utils.data.Dataset):
    """Item k of epoch e: the k-th (real, synthetic) pair of `epoch_plan`, each image augmented
    with a generator seeded by (seed, e, k, stream). Call `set_epoch` before iterating; `limit`
    keeps the first pairs of each epoch only (short epochs for quick runs); `length` makes every
    epoch exactly that many pairs, cycling the data (a training length in iterations)."""

    def __init__(self, real: TrainImages, synthetic: TrainImages, transform: TrainTransform, seed: int,
                 limit: int | None = None, length: int | None = None):
        self.real, self.synthetic, self.transform, self.seed = real, synthetic, transform, seed
        self.limit, self.length = limit, length
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.plan = epoch_plan(len(self.real), len(self.synthetic), epoch, self.seed, self.length)[: self.limit]

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> dict:
        out = {}
        for tag, (images, index) in enumerate(zip((self.real, self.synthetic), self.plan[k])):
            key = "real" if tag == REAL else "synthetic"
            if index is None:
                out[key] = None
                continue
            rng = np.random.default_rng([self.seed, self.epoch, k, tag])
            out[key] = (self.transform(load_rgb(images.files[index]), rng), images.labels[index])
        return out


def collate_pairs(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack a list of pairs into real and synthetic batches (empty tensors for an unused set)."""
    batch = {}
    for key in ("real", "synthetic"):
        present = [item[key] for item in items if item[key] is not None]
        if present:
            batch[f"{key}_pixels"] = torch.stack([pixels for pixels, _ in present])
            batch[f"{key}_labels"] = torch.tensor([label for _, label in present], dtype=torch.long)
        else:
            batch[f"{key}_pixels"] = torch.empty(0)
            batch[f"{key}_labels"] = torch.empty(0, dtype=torch.long)
    return batch


class ProcessedImages(torch.utils.data.Dataset):
    """Labelled image files through the encoder's standard preprocessing (evaluation)."""

    def __init__(self, files: list[Path], labels: list[int], processor):
        self.files, self.labels, self.processor = list(files), list(labels), processor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        pixels = self.processor(images=load_rgb(self.files[k]), return_tensors="pt")["pixel_values"][0]
        return pixels, self.labels[k]


def worker_count(requested: int) -> int:
    """DataLoader workers: as asked, but no more than the CPUs this process may use."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(requested, available))
