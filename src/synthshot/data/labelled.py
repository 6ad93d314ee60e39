"""Labelled images for evaluation and fine-tuning: one list of files with integer labels in the
label order of the classes being classified, from any of the sources `EvalDataConfig` names.

Test classes are matched to the classifier's classes by folder key, then by prompt name
(case, `_` and `-` ignored); a test class that matches none is an error naming it, never a
silently dropped or mislabelled image.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from synthshot.errors import DataError


@dataclass
class LabelledImages:
    """Image files with labels indexing `classes` (class keys, the few-shot split's folder names)."""

    files: list[Path]
    labels: list[int]
    classes: list[str]
    source: str  # where the images came from, for messages and results.json

    def __len__(self) -> int:
        return len(self.files)

    def by_class(self) -> dict[str, list[Path]]:
        grouped: dict[str, list[Path]] = {name: [] for name in self.classes}
        for path, label in zip(self.files, self.labels):
            grouped[self.classes[label]].append(path)
        return grouped


def _norm(name: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


def match_classes(found: list[str], classes: list[str], prompt_names: dict[str, str], source: str) -> dict[str, int]:
    """Map each class name found in `source` to an index in `classes`, or fail naming the unknown ones."""
    index = {name: i for i, name in enumerate(classes)}
    by_norm: dict[str, int] = {}
    for i, name in enumerate(classes):
        by_norm.setdefault(_norm(name), i)
        by_norm.setdefault(_norm(prompt_names.get(name, name)), i)
    mapping, unknown = {}, []
    for name in found:
        if name in index:
            mapping[name] = index[name]
        elif _norm(name) in by_norm:
            mapping[name] = by_norm[_norm(name)]
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise DataError(
            f"{source} has {len(unknown)} class(es) that the classifier does not know: {shown}. "
            f"Known classes: {', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}"
        )
    return mapping


def from_grouped(
    grouped: dict[str, list[Path]],
    classes: list[str],
    prompt_names: dict[str, str],
    source: str,
    *,
    max_per_class: int | None = None,
    seed: int = 0,
) -> LabelledImages:
    """Labelled images from class -> files, optionally capped per class by a seeded draw."""
    mapping = match_classes(list(grouped), classes, prompt_names, source)
    files, labels = [], []
    for name, paths in grouped.items():
        paths = sorted(paths)
        if max_per_class is not None and len(paths) > max_per_class:
            paths = sorted(random.Random(f"{seed}:{name}").sample(paths, max_per_class))
        files.extend(paths)
        labels.extend([mapping[name]] * len(paths))
    if not files:
        raise DataError(f"{source} holds no images")
    return LabelledImages(files=files, labels=labels, classes=list(classes), source=source)


def load_labelled_images(
    settings,
    classes: list[str],
    prompt_names: dict[str, str],
    *,
    data_root: Path | None = None,
    exclude: set[Path] | frozenset = frozenset(),
    seed: int = 0,
) -> LabelledImages:
    """The images an `EvalDataConfig` names.

    `heldout` takes the images of `data_root` (an image folder) that are not in `exclude` (the
    few-shot files), so a user with one folder of labelled images gets an honest test set.
    """
    from synthshot.data.folders import scan_image_folder

    cap = {"max_per_class": settings.max_per_class, "seed": seed}
    if settings.source == "coop":
        from synthshot.data.coop import load_coop_split

        if settings.split_file is None:
            raise DataError("evaluation source 'coop' needs split_file (the CoOp split JSON)")
        split = load_coop_split(settings.split_file, settings.root)
        missing = split.missing_files(settings.split)
        if missing:
            shown = ", ".join(str(p) for p in missing[:5])
            raise DataError(
                f"{len(missing)} file(s) of the {settings.split!r} split of {settings.split_file} are missing, "
                f"e.g. {shown}: check the split's image root (root)"
            )
        return from_grouped(split.by_class(settings.split), classes, prompt_names,
                            f"split file {settings.split_file} ({settings.split})", **cap)
    if settings.source == "folder":
        if settings.root is None:
            raise DataError("evaluation source 'folder' needs root (an image folder root/<class>/<image>)")
        return from_grouped(scan_image_folder(settings.root), classes, prompt_names, f"image folder {settings.root}", **cap)
    if data_root is None:
        raise DataError(
            "evaluation source 'heldout' needs data.root (or data.demo): or set the test source to 'folder' or 'coop'"
        )
    grouped = {
        name: [p for p in paths if p.resolve() not in exclude]
        for name, paths in scan_image_folder(data_root).items()
    }
    grouped = {name: paths for name, paths in grouped.items() if paths}
    if not grouped:
        raise DataError(
            f"every image of {data_root} is in the few-shot split, so none is left to test on: "
            "use fewer shots or give a test folder or split file"
        )
    return from_grouped(grouped, classes, prompt_names, f"held-out images of {data_root}", **cap)
