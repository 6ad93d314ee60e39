"""CoOp-style split files: `{"train": [[path, label, classname], ...], "val": [...], "test": [...]}`.

The benchmark datasets commonly ship these (KaiyangZhou/CoOp `split_zhou_*.json`); `path` is
relative to an image root. Labels are 0-based and each label has exactly one class name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from synthshot.errors import DataError
from synthshot.io import parse_json

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitEntry:
    path: Path
    label: int
    classname: str


@dataclass
class CoopSplit:
    """The parsed split file; `classnames[label]` is the name of each label."""

    source: Path
    splits: dict[str, list[SplitEntry]]
    classnames: list[str]

    @property
    def class_keys(self) -> list[str]:
        """One distinct key per label: the class name, with the label appended where a name is
        repeated (ImageNet's CLIP names have two 'missile' and two 'sunglasses' classes)."""
        counts: dict[str, int] = {}
        for name in self.classnames:
            counts[name] = counts.get(name, 0) + 1
        return [name if counts[name] == 1 else f"{name} (label {label})" for label, name in enumerate(self.classnames)]

    def entries(self, split: str) -> list[SplitEntry]:
        if split not in self.splits:
            raise DataError(f"split file {self.source} has no {split!r} list (it has {', '.join(self.splits)})")
        return self.splits[split]

    def by_class(self, split: str) -> dict[str, list[Path]]:
        """class name -> files of one split, classes in label order (the few-shot split's input)."""
        keys = self.class_keys
        grouped: dict[str, list[Path]] = {key: [] for key in keys}
        for entry in self.entries(split):
            grouped[keys[entry.label]].append(entry.path)
        return grouped

    def prompt_names(self) -> dict[str, str]:
        """class key -> the name prompts use (CoOp: `_` read as a space)."""
        return {key: name.replace("_", " ") for key, name in zip(self.class_keys, self.classnames)}

    def missing_files(self, split: str | None = None) -> list[Path]:
        names = [split] if split else list(self.splits)
        return [e.path for name in names for e in self.entries(name) if not e.path.is_file()]


def load_coop_split(path: str | Path, image_root: str | Path | None = None) -> CoopSplit:
    """Read and check a split file; paths are resolved against `image_root` (default: its folder)."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {path} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict) or not any(name in data for name in SPLITS):
        raise DataError(f"split file {path} is not a CoOp split: expected a mapping with train/val/test lists")
    names: dict[int, str] = {}
    splits: dict[str, list[SplitEntry]] = {}
    for split in SPLITS:
        if split not in data:
            continue
        rows = data[split]
        if not isinstance(rows, list):
            raise DataError(f"split file {path}: {split!r} must be a list of [path, label, classname]")
        entries = []
        for index, row in enumerate(rows):
            where = f"split file {path}, {split}[{index}]"
            if not (isinstance(row, (list, tuple)) and len(row) == 3):
                raise DataError(f"{where}: expected [path, label, classname], got {row!r}")
            rel, label, classname = row
            if not isinstance(rel, str) or not isinstance(label, int) or isinstance(label, bool) or label < 0:
                raise DataError(f"{where}: expected a path string and a label >= 0, got {row!r}")
            if not isinstance(classname, str) or not classname.strip():
                raise DataError(f"{where}: empty class name")
            known = names.setdefault(label, classname)
            if known != classname:
                raise DataError(f"{where}: label {label} is named both {known!r} and {classname!r}")
            entries.append(SplitEntry(root / rel, label, classname))
        splits[split] = entries
    labels = sorted(names)
    if labels != list(range(len(labels))):
        gaps = sorted(set(range(max(labels) + 1)) - set(labels)) if labels else []
        raise DataError(f"split file {path}: labels must be 0..N-1; missing {gaps[:10]}")
    classnames = [names[label] for label in labels]
    return CoopSplit(source=path, splits=splits, classnames=classnames)


def coop_rows(entries: list[SplitEntry], image_root: Path) -> list[list]:
    """The JSON rows of a split, paths relative to `image_root` (POSIX separators)."""
    return [[e.path.relative_to(image_root).as_posix(), e.label, e.classname] for e in entries]


def save_coop_split(path: str | Path, splits: dict[str, list]) -> None:
    """Write ``{"train": [[path, label, classname], ...], "val": ..., "test": ...}`` atomically,
    one row per line (readable, and small enough for ImageNet's 1.3M rows)."""
    from synthshot.io import atomic_write_text

    parts = []
    for name in SPLITS:
        rows = splits.get(name, [])
        body = ",\n".join(
            "    " + json.dumps([str(p), int(label), str(c)], ensure_ascii=False) for p, label, c in rows
        )
        parts.append(f'  "{name}": [\n{body}\n  ]' if rows else f'  "{name}": []')
    atomic_write_text(path, "{\n" + ",\n".join(parts) + "\n}\n")
