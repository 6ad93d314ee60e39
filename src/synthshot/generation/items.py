"""The generation work plan: one `WorkItem` per synthetic image, fixed before any rendering.

Every random choice of an item (its seed, positive image, negative class and image) comes from
the item's own seed, derived from (base seed, class, index). An item therefore never depends on
the batch size, the shard, the other classes' items or how many images per class are asked for,
so any sharding or resumed run produces the same images (DESIGN.md sections 5 and 6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from synthshot.errors import ConfigError, DataError
from synthshot.io import unique_slugs

Mode = Literal["dual", "single", "text"]
MODES = ("dual", "single", "text")

# How far a row of negative-class probabilities may be from summing to 1.
PROB_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class WorkItem:
    """One synthetic image to render: what to draw it from and the seed that fixes it."""

    id: str
    class_name: str
    class_slug: str
    label: int
    index: int
    seed: int
    prompt: str
    positive_file: str | None
    negative_class: str | None
    negative_file: str | None

    def to_record(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> WorkItem:
        """Rebuild an item from a record (extra keys, such as a manifest's `file`, are ignored)."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in record]
        if missing:
            raise DataError(
                f"work item record {record.get('id', '?')!r} lacks the keys {missing}: "
                "it was not written by this version of synthshot; regenerate it"
            )
        return cls(**{name: record[name] for name in names})


def _derive_seed(text: str) -> int:
    """A stable 63-bit seed from text (sha256, never Python's salted `hash`)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def item_seed(base_seed: int, class_name: str, index: int) -> int:
    """The seed of image `index` of `class_name`: a 63-bit int from sha256 of "base:class:index"."""
    return _derive_seed(f"{base_seed}:{class_name}:{index}")


def item_noise_seed(item: WorkItem) -> int:
    """Seed of the item's initial latent noise."""
    return _derive_seed(f"{item.seed}:noise")


def item_augment_seed(item: WorkItem) -> int:
    """Seed of the random augmentation of the item's IP-Adapter input images."""
    return _derive_seed(f"{item.seed}:augment")


def plan_items(
    split: dict[str, list[str]],
    *,
    images_per_class: int,
    base_seed: int,
    prompts: dict[str, str | list[str]],
    mode: Mode,
    negative_probs: dict[str, dict[str, float]] | None,
) -> list[WorkItem]:
    """List the work items of a generation run: classes sorted by name, then index within class.

    `split` maps each class to its few-shot image files; `negative_probs[a]` is the distribution
    of the negative class for class `a` over the other classes (DIPSY class-similarity sampling);
    `None` means uniform over the other classes. Positive image, negative class and negative image
    are drawn in that order from a generator seeded with the item seed alone. A class's prompt is
    one string, or a list that image `index` cycles through (`prompts[index % len]`).
    """
    if mode not in MODES:
        raise ConfigError(f"generation.mode {mode!r} is not one of {list(MODES)}")
    if images_per_class < 1:
        raise ConfigError(f"generation.images_per_class must be at least 1, got {images_per_class}")
    classes = sorted(split)
    if not classes:
        raise DataError("the split has no classes: give at least one class to generate")
    slugs = unique_slugs(classes)
    missing_prompts = [name for name in classes if name not in prompts]
    if missing_prompts:
        raise DataError(f"no prompt for the classes {missing_prompts}: give one prompt per class")
    empty_prompts = [name for name in classes if not isinstance(prompts[name], str) and not prompts[name]]
    if empty_prompts:
        raise DataError(f"the prompt lists of the classes {empty_prompts} are empty: give at least one prompt")
    if mode != "text":
        for name in classes:
            if not split[name]:
                raise DataError(
                    f"class {name!r} has no few-shot images, which generation.mode={mode} needs: "
                    "add images for it or use generation.mode=text"
                )
    rows = _negative_rows(classes, negative_probs) if mode == "dual" else {}

    items = []
    for label, name in enumerate(classes):
        files = split[name]
        for index in range(images_per_class):
            seed = item_seed(base_seed, name, index)
            rng = np.random.default_rng(seed)
            positive = negative_class = negative_file = None
            if mode != "text":
                positive = files[int(rng.integers(len(files)))]
            if mode == "dual":
                candidates, cumulative = rows[name]
                negative_class = candidates[_draw(cumulative, rng.random())]
                negative_files = split[negative_class]
                negative_file = negative_files[int(rng.integers(len(negative_files)))]
            items.append(
                WorkItem(
                    id=f"{slugs[name]}-{index:05d}",
                    class_name=name,
                    class_slug=slugs[name],
                    label=label,
                    index=index,
                    seed=seed,
                    prompt=_prompt_for(prompts[name], index),
                    positive_file=positive,
                    negative_class=negative_class,
                    negative_file=negative_file,
                )
            )
    return items


def _prompt_for(prompts: str | list[str], index: int) -> str:
    return prompts if isinstance(prompts, str) else prompts[index % len(prompts)]


def _negative_rows(
    classes: list[str], negative_probs: dict[str, dict[str, float]] | None
) -> dict[str, tuple[list[str], np.ndarray]]:
    """Check the negative-class distributions; return per class its candidates (sorted, with
    non-zero probability) and their cumulative probabilities, normalised to end at exactly 1."""
    if len(classes) < 2:
        raise DataError(
            f"generation.mode=dual with the single class {classes[0]!r}: there is no other class "
            "to draw a negative from: use generation.mode=single"
        )
    known = set(classes)
    rows = {}
    for name in classes:
        if negative_probs is None:
            row = {other: 1.0 for other in classes if other != name}
        elif name not in negative_probs:
            raise DataError(f"the negative-class probabilities have no row for class {name!r}: recompute the similarity")
        else:
            row = negative_probs[name]
        unknown = sorted(set(row) - known)
        if unknown:
            raise DataError(f"the negative-class probabilities of class {name!r} name unknown classes {unknown}")
        values = {other: float(p) for other, p in row.items()}
        bad = {other: p for other, p in values.items() if not math.isfinite(p) or p < 0}
        if bad:
            raise DataError(f"the negative-class probabilities of class {name!r} must be finite and >= 0, got {bad}")
        if values.get(name, 0.0) > 0:
            raise DataError(f"class {name!r} has probability {values[name]} of being its own negative: it must be 0")
        total = sum(values.values())
        if negative_probs is not None and abs(total - 1.0) > PROB_SUM_TOLERANCE:
            raise DataError(
                f"the negative-class probabilities of class {name!r} sum to {total:.6g}, not 1: "
                "recompute the similarity"
            )
        candidates = [other for other in sorted(values) if values[other] > 0]
        cumulative = np.cumsum([values[other] for other in candidates]) / total
        rows[name] = (candidates, cumulative)
    return rows


def _draw(cumulative: np.ndarray, u: float) -> int:
    """Index of the bin of `u` in [0, 1) given cumulative probabilities ending at 1."""
    return min(int(np.searchsorted(cumulative, u, side="right")), len(cumulative) - 1)


def shard_items(items: list[WorkItem], index: int, count: int) -> list[WorkItem]:
    """The items of shard `index` of `count`: item k goes to shard k % count."""
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {index}/{count} does not exist: use i/n with 0 <= i < n")
    return items[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """Parse a shard given as "i/n" (0-based shard i of n) into (i, n)."""
    parts = str(text).strip().split("/")
    try:
        index, count = (int(part) for part in parts)
    except ValueError:
        raise ConfigError(f"shard {text!r} is not of the form i/n, e.g. 0/4 for the first of four shards") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard {text!r} does not exist: use i/n with n >= 1 and 0 <= i < n")
    return index, count
