"""Few-shot splits: which K labelled images per class a run uses, drawn reproducibly.

Each class's files are sorted, then shuffled by a RNG seeded from sha256(f"{seed}:{class}") only,
and the first K are taken. The split is therefore the same on every machine and Python run, does
not change when other classes are added, and is nested: the 1-shot set is a prefix of the 2-shot
set, which is a prefix of the 4-shot set, and so on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

from synthshot.data.folders import is_readable
from synthshot.errors import DataError
from synthshot.io import atomic_write_json, parse_json, relative_to_root, slugify, unique_slugs

logger = logging.getLogger("synthshot.data")


def class_rng(seed: int, class_name: str) -> random.Random:
    """A RNG that depends on (seed, class name) only, not on hash randomisation or other classes."""
    digest = hashlib.sha256(f"{seed}:{class_name}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def shuffled_files(files: list[Path], seed: int, class_name: str) -> list[Path]:
    """The class's files in their seeded order; the K-shot set is always the first K of it."""
    # Sort by file name first so the order does not depend on how the root was spelled.
    order = sorted(files, key=lambda p: (p.name, p.as_posix()))
    class_rng(seed, class_name).shuffle(order)
    return order


def make_fewshot_split(
    images: dict[str, list[Path]],
    shots: int,
    seed: int,
    *,
    allow_fewer: bool = False,
    skip_corrupt: bool = False,
    verify: bool = True,
) -> dict[str, list[Path]]:
    """Choose `shots` images per class, reproducibly and nested across shot counts.

    With `verify`, the chosen files are decoded; an unreadable one raises, or with `skip_corrupt`
    is replaced by the next file in the seeded order (so nesting still holds). A class with fewer
    than `shots` (readable) images is an error unless `allow_fewer`, which takes all it has.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise DataError(f"shots={shots!r} is not a positive whole number: set data.shots to 1 or more")
    if not images:
        raise DataError("the dataset has no classes: check data.root")
    unique_slugs(list(images))

    split: dict[str, list[Path]] = {}
    for name, files in images.items():
        if len(files) < shots and not allow_fewer:
            raise DataError(
                f"class {name!r} has {len(files)} images, fewer than shots={shots}: "
                "add images, lower data.shots, or set data.allow_fewer=true"
            )
        chosen: list[Path] = []
        for path in shuffled_files(files, seed, name):
            if len(chosen) == shots:
                break
            if not verify or is_readable(path, skip_corrupt):
                chosen.append(path)
        if not chosen:
            raise DataError(f"class {name!r} has no readable image among its {len(files)} files: replace them")
        if len(chosen) < shots:
            if not allow_fewer:
                raise DataError(
                    f"class {name!r} has {len(chosen)} readable images of {len(files)}, fewer than "
                    f"shots={shots}: replace the unreadable ones, lower data.shots, or set data.allow_fewer=true"
                )
            logger.info("class %r has %d images, fewer than shots=%d: using all of them", name, len(chosen), shots)
        split[name] = chosen
    return split


def split_path(out_dir: Path, dataset_name: str, shots: int, seed: int) -> Path:
    """Where the split of `dataset_name` for (shots, seed) is stored under a run's output folder."""
    return Path(out_dir) / "splits" / f"{slugify(dataset_name)}_shot{int(shots)}_seed{int(seed)}.json"


def _absolute(path: Path) -> str:
    # abspath, not resolve(): keep the names of symlinked files (e.g. blobs in a hub cache).
    return Path(os.path.abspath(path)).as_posix()


SPLIT_FORMAT = "synthshot-split-2"


def save_split(path: Path, split: dict[str, list[Path]], root: Path | str | None = None) -> None:
    """Write the split as JSON, atomically, with each class's images in selection order.

    With `root` (the data root): `{"format": "synthshot-split-2", "root": <absolute posix root>,
    "classes": {class: [posix paths relative to root]}}`, so that the split survives copying the
    run folder or moving the data (load it with the data's current root). An image not under `root`
    is stored as its absolute path. Without `root`: the old `{class: [absolute posix paths]}`.
    """
    if root is None:
        atomic_write_json(path, {name: [_absolute(p) for p in files] for name, files in split.items()})
        return
    recorded = _absolute(Path(root))
    classes = {name: [relative_to_root(p, recorded) for p in files] for name, files in split.items()}
    atomic_write_json(path, {"format": SPLIT_FORMAT, "root": recorded, "classes": classes})


def _check_classes(path: Path, data: object, where: str = "") -> dict[str, list[str]]:
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"split file {path}{where} must hold a non-empty JSON object {{class: [image paths]}}: remake it"
        )
    for name, files in data.items():
        if not name.strip():
            raise DataError(f"split file {path} has an empty class name: remake it")
        if not isinstance(files, list) or not files:
            raise DataError(f"split file {path}: class {name!r} must map to a non-empty list of image paths")
        if not all(isinstance(f, str) and f for f in files):
            raise DataError(f"split file {path}: class {name!r} lists an entry that is not a path string")
        if len(set(files)) != len(files):
            raise DataError(f"split file {path}: class {name!r} lists the same image twice: remove the repeat")
    return data


def _is_new_format(data: object) -> bool:
    # An old-format file maps every key (even a class called "format") to a list, never to a string.
    return isinstance(data, dict) and isinstance(data.get("format"), str)


def _check_structure(path: Path, data: object) -> tuple[str | None, dict[str, list[str]]]:
    """(recorded root or None for the old format, {class: [entries as written]})."""
    if not _is_new_format(data):
        return None, _check_classes(path, data)
    if data["format"] != SPLIT_FORMAT:
        raise DataError(
            f"split file {path} has an unknown format {data['format']!r} (this version reads {SPLIT_FORMAT!r} "
            "and the plain {class: [image paths]}): upgrade synthshot or make the split again"
        )
    extra = sorted(set(data) - {"format", "root", "classes"})
    if extra:
        raise DataError(f"split file {path} has an unexpected key {extra[0]!r}: remove it or make the split again")
    root = data.get("root")
    if not isinstance(root, str) or not Path(root).is_absolute():
        raise DataError(
            f"split file {path}: 'root' must be an absolute path string (the data root it was made with), "
            f"not {root!r}: fix it or make the split again"
        )
    return root, _check_classes(path, data.get("classes"), " under 'classes'")


def _read_split_json(path: Path) -> tuple[str | None, dict[str, list[str]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist: check the path, or make the split again")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc}): fix it or make the split again") from None
    return _check_structure(path, data)


def split_root(path: Path) -> Path | None:
    """The data root a split file records (`save_split` with `root`), or None for the old format."""
    recorded, _ = _read_split_json(Path(path))
    return None if recorded is None else Path(recorded)


def load_split(path: Path, root: Path | str | None = None) -> dict[str, list[Path]]:
    """Read a split written by `save_split`. Every listed image must exist.

    New format: relative entries are joined to `root` (the data's current root, which may differ
    from the recorded one after the data or the run folder was moved or copied), or without it to
    the recorded root. Old format (`{class: [paths]}`): relative entries are taken from the split
    file's folder and `root` is not used.
    """
    path = Path(path)
    recorded, data = _read_split_json(path)
    if recorded is None:
        base = path.parent
    else:
        base = Path(_absolute(Path(root if root is not None else recorded)))

    split = {name: [Path(_absolute(base / f)) for f in files] for name, files in data.items()}
    missing = [p for files in split.values() for p in files if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        if recorded is not None and base != Path(_absolute(Path(recorded))):
            raise DataError(
                f"split file {path} was made with data root {recorded} but its images were looked for in "
                f"{base}, where {len(missing)} image(s) are missing: {shown}{more}: point data.root at the data's "
                "new place, or make the split again"
            )
        raise DataError(
            f"split file {path} lists {len(missing)} missing image(s): {shown}{more}: "
            "restore them or make the split again"
        )
    return split


def _printable(name: str) -> str:
    # A newline or tab in a class name would break the table's columns: show it escaped.
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)


def summarize_split(split: dict[str, list[Path]], total_counts: dict[str, int] | None = None) -> str:
    """A plain-text table: class, images available, shots taken; then a total line."""
    rows = [("class", "available", "shots")]
    for name, files in split.items():
        available = str(total_counts[name]) if total_counts and name in total_counts else "-"
        rows.append((name, available, str(len(files))))
    total_available = str(sum(total_counts.get(n, 0) for n in split)) if total_counts else "-"
    rows.append((f"total ({len(split)} classes)", total_available, str(sum(len(f) for f in split.values()))))

    rows = [(_printable(name), available, shots) for name, available, shots in rows]
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    lines = [f"{n:<{widths[0]}}  {a:>{widths[1]}}  {s:>{widths[2]}}" for n, a, s in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
