"""Class similarity from CLIP image embeddings, and the distribution negatives are drawn from.

DIPSY (Boudier et al., BMVC 2025, Sec. 3.3) conditions the second IP-Adapter on an image of a class
*similar* to the one being generated. Similarity comes from CLIP image embeddings of the few-shot
images; the negative class b for a positive class a is drawn from

    P[a, b] = softmax_{b != a}(S[a, b] / tau),   tau = 0.4,

i.e. the softmax over the row with the class itself left out. Drawing it uniformly instead is the
paper's ablation (`uniform_distribution`).

The pure functions (`class_similarity`, `negative_distribution`, `uniform_distribution`) work on
tensors only; `embed_images` and `compute_class_similarity` run a transformers CLIP model over
image files; `SimilarityResult` is what the `similarity` stage writes and the generation planner
reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from synthshot.data.folders import load_rgb
from synthshot.errors import ConfigError, DataError
from synthshot.io import atomic_write_bytes, atomic_write_text, parse_json

if TYPE_CHECKING:
    from PIL import Image

SimilarityMethod = Literal["class_mean", "normalized_mean", "pairwise_mean"]
SIMILARITY_METHODS = ("class_mean", "normalized_mean", "pairwise_mean")
Sampling = Literal["similarity", "uniform"]

SIMILARITY_FILE = "similarity.safetensors"
# 2: `class_mean` averages the raw embeddings (the official code); files without it (1) averaged
# normalised ones, what `normalized_mean` is now, so they are computed again.
SIMILARITY_FORMAT = 2
NEGATIVES_FILE = "negatives.csv"
TOP_NEGATIVES_IN_CSV = 5

_SINGLE_CLASS_MESSAGE = (
    "one class has no other class to draw a negative from: use generation.mode=single"
)


# --------------------------------------------------------------------------------------------
# Pure math
# --------------------------------------------------------------------------------------------


def class_similarity(
    embeddings: Sequence[torch.Tensor], method: SimilarityMethod = "class_mean"
) -> torch.Tensor:
    """Class-to-class similarity S [C, C] from per-class image embeddings (DIPSY Sec. 3.3).

    `embeddings[c]` is a [n_c, D] tensor of the image embeddings of class c (n_c >= 1).

    - `class_mean` (the official DIPSY code, default): average the raw embeddings of each class,
      then take cosines of the means: S[a, b] = cos(mean_a, mean_b). An image whose embedding is
      longer weighs more in its class's mean. S[a, a] = 1.
    - `normalized_mean`: normalise every embedding first, then average and take cosines (every
      image weighs the same; synthshot's default before it matched the official code).
    - `pairwise_mean` (the paper's prose): S[a, b] = mean over all pairs (i in a, j in b) of
      cos(x_i, x_j). For a == b the i == j pairs (cosine 1) are included, so S[a, a] is the mean
      of the full n_a x n_a cosine matrix: 1 only when all images of a embed alike, and it does
      not matter downstream since the negative distribution leaves the diagonal out.
      Computed exactly as <mean_i u_i, mean_j v_j> of the unit vectors (bilinearity of the dot
      product), without building the pair matrix.

    Returns a symmetric float32 tensor on the CPU.
    """
    if method not in SIMILARITY_METHODS:
        raise ConfigError(f"similarity.method {method!r} is unknown: use one of {', '.join(SIMILARITY_METHODS)}")
    if len(embeddings) == 0:
        raise DataError("no classes to compare: the split has no class with images")
    dims = {tuple(e.shape[1:]) for e in embeddings}
    if any(e.ndim != 2 for e in embeddings) or len(dims) != 1:
        shapes = [tuple(e.shape) for e in embeddings]
        raise DataError(f"class embeddings must all be [n_c, D] with the same D, got {shapes}")
    for index, e in enumerate(embeddings):
        if e.shape[0] == 0:
            raise DataError(f"class number {index} has no image embeddings: give it images")

    # float64 so that the diagonal and symmetry hold to float32 precision after the cast back.
    rows = [e.detach().cpu().double() for e in embeddings]
    if method != "class_mean":
        rows = [F.normalize(e, dim=-1) for e in rows]
    means = torch.stack([e.mean(dim=0) for e in rows])
    if method != "pairwise_mean":
        means = F.normalize(means, dim=-1)
    similarity = means @ means.T
    similarity = (similarity + similarity.T) / 2  # exact symmetry despite rounding
    return similarity.float()


def _check_temperature(temperature: float) -> None:
    try:
        valid = math.isfinite(float(temperature)) and float(temperature) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(
            f"similarity.temperature must be a positive number, got {temperature!r} "
            "(the DIPSY value is 0.4)"
        )


def _check_square(matrix: torch.Tensor, what: str) -> int:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DataError(f"{what} must be a square [C, C] matrix, got shape {tuple(matrix.shape)}")
    return matrix.shape[0]


def negative_distribution(similarity: torch.Tensor, temperature: float = 0.4) -> torch.Tensor:
    """Negative-class probabilities P [C, C] from the class similarity S (DIPSY Sec. 3.3).

    P[a, ·] = softmax(S[a, ·] / tau) with the diagonal removed and each row renormalised. That is
    the same as a softmax over the row with S[a, a] masked to -inf, which is how it is computed.
    The diagonal is exactly 0 and every row sums to 1; a lower tau concentrates the mass on the
    most similar classes.
    """
    _check_temperature(temperature)
    num_classes = _check_square(similarity, "the class similarity")
    if num_classes < 2:
        raise DataError(_SINGLE_CLASS_MESSAGE)
    if not torch.isfinite(similarity).all():
        raise DataError("the class similarity holds NaN or infinite values: check the embeddings")
    logits = similarity.detach().cpu().double() / float(temperature)
    diagonal = torch.eye(num_classes, dtype=torch.bool)
    probs = torch.softmax(logits.masked_fill(diagonal, float("-inf")), dim=-1)
    return probs.float()


def uniform_distribution(num_classes: int) -> torch.Tensor:
    """The ablation of similarity sampling: every other class with probability 1 / (C - 1)."""
    if num_classes < 2:
        raise DataError(_SINGLE_CLASS_MESSAGE)
    probs = torch.full((num_classes, num_classes), 1.0 / (num_classes - 1), dtype=torch.float32)
    probs.fill_diagonal_(0.0)
    return probs


# --------------------------------------------------------------------------------------------
# Embedding images with a transformers CLIP model
# --------------------------------------------------------------------------------------------


def _image_features(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings from a `CLIPModel` or a `CLIPVisionModelWithProjection`."""
    if hasattr(model, "get_image_features"):
        # transformers 4 returns the projected tensor; transformers 5 returns a model output whose
        # `pooler_output` holds the projected embedding.
        output = model.get_image_features(pixel_values=pixel_values)
        if isinstance(output, torch.Tensor):
            return output
        for name in ("image_embeds", "pooler_output"):
            value = getattr(output, name, None)
            if isinstance(value, torch.Tensor):
                return value
        raise TypeError(
            f"{type(model).__name__}.get_image_features returned {type(output).__name__} "
            "without an embedding tensor"
        )
    output = model(pixel_values=pixel_values)
    embeds = getattr(output, "image_embeds", None)
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__} gives no image embeddings: use a CLIPModel or a "
            "CLIPVisionModelWithProjection"
        )
    return embeds


def embed_images(
    model: torch.nn.Module,
    processor: Callable,
    images: Sequence[Image.Image],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """CLIP image embeddings [N, D] (projected, not normalised), float32 on the CPU.

    `processor` is the model's image processor (e.g. `CLIPImageProcessor`); `model` must already be
    on `device`. Images are processed `batch_size` at a time under `torch.inference_mode()`.
    """
    if batch_size < 1:
        raise ConfigError(f"similarity.batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise DataError("no images to embed")
    dtype = getattr(model, "dtype", torch.float32)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
            pixel_values = pixel_values.to(device=device, dtype=dtype)
            chunks.append(_image_features(model, pixel_values).float().cpu())
    return torch.cat(chunks)


# --------------------------------------------------------------------------------------------
# The stage's result
# --------------------------------------------------------------------------------------------


@dataclass
class SimilarityResult:
    """Class similarity and negative-class probabilities, rows and columns in `classes` order."""

    classes: list[str]
    similarity: torch.Tensor
    negative_probs: torch.Tensor
    method: str = "class_mean"
    temperature: float = 0.4
    sampling: str = "similarity"
    model_id: str | None = None
    format: int = SIMILARITY_FORMAT

    def __post_init__(self) -> None:
        num_classes = len(self.classes)
        for name in ("similarity", "negative_probs"):
            shape = tuple(getattr(self, name).shape)
            if shape != (num_classes, num_classes):
                raise DataError(
                    f"{name} has shape {shape} but there are {num_classes} classes: "
                    f"expected ({num_classes}, {num_classes})"
                )
        if len(set(self.classes)) != num_classes:
            raise DataError(f"class names repeat in {self.classes}: give each class one name")

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{class: {other class: probability of drawing it as the negative}}, self excluded."""
        probs = self.negative_probs.tolist()
        return {
            name: {other: probs[a][b] for b, other in enumerate(self.classes) if b != a}
            for a, name in enumerate(self.classes)
        }

    def top_negatives(self, k: int = TOP_NEGATIVES_IN_CSV) -> dict[str, list[tuple[str, float]]]:
        """Each class's k most likely negatives, most likely first (ties in class order)."""
        return {
            name: sorted(row.items(), key=lambda item: -item[1])[:k]
            for name, row in self.as_dict().items()
        }

    def save(self, folder: str | Path) -> None:
        """Write `similarity.safetensors` (tensors + metadata) and a readable `negatives.csv`."""
        from safetensors.torch import save

        folder = Path(folder)
        metadata = {
            "classes": json.dumps(self.classes, ensure_ascii=False),
            "method": self.method,
            "temperature": repr(float(self.temperature)),
            "sampling": self.sampling,
            "format": str(self.format),
        }
        if self.model_id is not None:
            metadata["model_id"] = self.model_id
        tensors = {
            "similarity": self.similarity.detach().cpu().float().contiguous(),
            "negative_probs": self.negative_probs.detach().cpu().float().contiguous(),
        }
        atomic_write_bytes(folder / SIMILARITY_FILE, save(tensors, metadata=metadata))
        atomic_write_text(folder / NEGATIVES_FILE, self._negatives_csv())

    def _negatives_csv(self) -> str:
        k = min(TOP_NEGATIVES_IN_CSV, len(self.classes) - 1)
        header = ["class"]
        for rank in range(1, k + 1):
            header += [f"negative_{rank}", f"p_{rank}"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for name, negatives in self.top_negatives(k).items():
            row = [name]
            for other, prob in negatives:
                row += [other, f"{prob:.4f}"]
            writer.writerow(row)
        return buffer.getvalue()

    @classmethod
    def load(cls, folder: str | Path) -> SimilarityResult:
        """Read what `save` wrote in `folder`."""
        from safetensors import SafetensorError, safe_open

        path = Path(folder) / SIMILARITY_FILE
        if not path.is_file():
            raise DataError(f"{path} does not exist: run `synthshot similarity` first")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except SafetensorError as error:
            raise DataError(
                f"{path} is not a readable safetensors file ({error}): delete it and rerun "
                "`synthshot similarity`"
            ) from error
        missing = [k for k in ("similarity", "negative_probs") if k not in tensors]
        missing += [
            k for k in ("classes", "method", "temperature", "sampling") if k not in metadata
        ]
        if missing:
            raise DataError(
                f"{path} lacks {', '.join(missing)}: delete it and rerun `synthshot similarity`"
            )
        try:
            classes = parse_json(metadata["classes"])
            if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
                raise ValueError("its classes are not a list of names")
            return cls(
                classes=classes,
                similarity=tensors["similarity"],
                negative_probs=tensors["negative_probs"],
                method=metadata["method"],
                temperature=float(metadata["temperature"]),
                sampling=metadata["sampling"],
                model_id=metadata.get("model_id"),
                format=int(metadata.get("format", "1")),
            )
        except (ValueError, DataError) as exc:
            raise DataError(f"{path} is not a valid similarity file ({exc}): delete it and rerun `synthshot similarity`") from None


def compute_class_similarity(
    split: dict[str, Sequence[str | Path]],
    model: torch.nn.Module,
    processor: Callable,
    *,
    method: SimilarityMethod = "class_mean",
    temperature: float = 0.4,
    sampling: Sampling = "similarity",
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    load_image: Callable[[Path], Image.Image] = load_rgb,
    model_id: str | None = None,
) -> SimilarityResult:
    """Embed each class's few-shot images and derive S and the negative distribution P.

    `split` maps class name to its image files; classes come out sorted by name. Images are loaded
    one batch at a time with `load_image` (default: `synthshot.data.folders.load_rgb`, which names
    an unreadable file in its DataError). With `sampling="uniform"` S is still computed (for the
    record) but P is uniform.
    """
    _check_temperature(temperature)
    if batch_size < 1:
        raise ConfigError(f"similarity.batch_size must be >= 1, got {batch_size}")
    if sampling not in ("similarity", "uniform"):
        raise ConfigError(
            f"similarity.sampling {sampling!r} is unknown: use 'similarity' or 'uniform'"
        )
    classes = sorted(split)
    empty = [name for name in classes if len(split[name]) == 0]
    if empty:
        raise DataError(
            f"class(es) {', '.join(map(repr, empty))} have no images in the split: "
            "give every class at least one image"
        )
    if len(classes) < 2:
        raise DataError(_SINGLE_CLASS_MESSAGE)

    # One flat list so that batches span class boundaries and stay full.
    files = [(index, Path(path)) for index, name in enumerate(classes) for path in split[name]]
    per_class: list[list[torch.Tensor]] = [[] for _ in classes]
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images = [load_image(path) for _, path in chunk]
        embeds = embed_images(model, processor, images, batch_size=batch_size, device=device)
        for (index, _), embed in zip(chunk, embeds):
            per_class[index].append(embed)

    similarity = class_similarity([torch.stack(e) for e in per_class], method=method)
    if sampling == "uniform":
        negative_probs = uniform_distribution(len(classes))
    else:
        negative_probs = negative_distribution(similarity, temperature)
    return SimilarityResult(
        classes=classes,
        similarity=similarity,
        negative_probs=negative_probs,
        method=method,
        temperature=float(temperature),
        sampling=sampling,
        model_id=model_id,
    )
