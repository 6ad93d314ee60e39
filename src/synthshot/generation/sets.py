"""Reading a synthetic set: the finished images of a generation folder, as the readers use them.

A set folder (`synthetic/<class_slug>/<id>.<ext>` + `manifest.jsonl`) may hold more images per
class than a run asks for (a sweep over images per class extends one set): a run uses exactly the
first `images_per_class` of each class (by index), so its result never depends on which other
runs came first. Labels come from the class each record names, never from paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthshot.data.labelled import LabelledImages, match_classes
from synthshot.errors import DataError


@dataclass
class SyntheticSet:
    """The images of a synthetic set that one run uses."""

    folder: Path
    images: LabelledImages
    records: list[dict]
    images_per_class: int

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        found = {name: 0 for name in self.images.classes}
        for label in self.images.labels:
            found[self.images.classes[label]] += 1
        return found


def read_synthetic_set(folder: Path, classes: list[str], prompt_names: dict[str, str], *, images_per_class: int,
                       settings: str | None = None, require: bool = True) -> SyntheticSet:
    """The first `images_per_class` finished images of each class in `folder`.

    With `settings` (a settings digest), every image used must have been made with those settings.
    With `require`, a folder without images, or a class without images, is an error that says to
    generate them.
    """
    from synthshot.generation.runner import MANIFEST, finished_records

    folder = Path(folder)
    records = _first_per_class(finished_records(folder), images_per_class)
    if not records and require:
        raise DataError(f"{folder} holds no synthetic images ({MANIFEST}): run `synthshot generate` first")
    if settings is not None:
        other = [r for r in records if r.get("settings_digest") != settings]
        if other:
            raise DataError(
                f"{len(other)} image(s) of {folder} (e.g. {other[0].get('id')}) were made with other settings than "
                "this run's: rerun `synthshot generate`, or point synthetic_dir at the set made with this run's settings"
            )
    records.sort(key=lambda r: (str(r["class_name"]), int(r["index"])))
    mapping = match_classes(sorted({str(r["class_name"]) for r in records}), classes, prompt_names,
                            f"the manifest of {folder}")
    images = LabelledImages(
        files=[folder / r["file"] for r in records],
        labels=[mapping[str(r["class_name"])] for r in records],
        classes=list(classes),
        source=f"synthetic images of {folder}",
    )
    found = SyntheticSet(folder=folder, images=images, records=records, images_per_class=images_per_class)
    if require:
        missing = [name for name, n in found.counts().items() if n == 0]
        if missing:
            raise DataError(
                f"{folder} has no synthetic images of the classes {', '.join(repr(c) for c in missing[:8])}"
                f"{' ...' if len(missing) > 8 else ''}: run `synthshot generate` for this run's classes"
            )
    return found


def count_finished(folder: Path, images_per_class: int, settings: str | None = None) -> int:
    """How many finished images of index < images_per_class (made with `settings`) `folder` has."""
    from synthshot.generation.runner import finished_records

    records = _first_per_class(finished_records(Path(folder)), images_per_class)
    return sum(1 for r in records if settings is None or r.get("settings_digest") == settings)


def _first_per_class(finished: dict[str, dict], images_per_class: int) -> list[dict]:
    """The finished records of the first `images_per_class` images (by index) of each class."""
    return [r for r in finished.values() if int(r.get("index", -1)) < images_per_class]
