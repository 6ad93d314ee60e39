"""From an extracted dataset folder to its train/val/test split, and the checks on that split.

Each protocol names a reader (``SPLIT_READERS``) that returns ``{split: [(path, label), ...]}``
with paths relative to the dataset folder and labels in the class registry's order
(:mod:`synthshot.data.registry`). Readers match the dataset's own class ids or folder names to
registry classes and refuse anything they cannot place; names in the output always come from the
registry, so every protocol and every tool sees the same canonical names.

Also here: the files some peers' code expects that synthshot writes from the registry
(``GENERATORS``), and steps that reshape an extracted tree (``POSTPROCESS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from synthshot.data.registry import DatasetInfo
from synthshot.datasets.mat import read_mat
from synthshot.datasets.registry import SPLITS, DatasetSource, Protocol
from synthshot.errors import DataError

Rows = dict[str, list[tuple[str, int]]]
VAL_SEED = "synthshot-val-v1"  # changing it changes every carved val split: never do


@dataclass
class SplitContext:
    tree: Path  # the dataset folder being built or checked
    source: DatasetSource
    info: DatasetInfo
    protocol: Protocol
    files: dict[str, Path]  # registry file id -> local path of a plain (not extracted) file


class MissingImagesError(DataError):
    """A split that names images the dataset folder does not hold; ``missing`` lists them all."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


# -- helpers ------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def relative_path(text: str, where: str) -> str:
    """A split path as a clean relative POSIX path; ``DataError`` if absolute or with ``..``."""
    text = str(text).replace("\\", "/")
    path = PurePosixPath(text)
    if not text or text.startswith("/") or ".." in path.parts:
        raise DataError(f"{where}: path {text!r} is absolute or leaves the dataset folder: the split file is damaged")
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")]).as_posix()


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} is missing: the archive is incomplete or of another version; download it again")
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _by_official(ctx: SplitContext) -> dict[str, int]:
    return {c.official: c.label for c in ctx.info.classes}


def _label_of(table: dict[str, int], key: str, where: str, ctx: SplitContext) -> int:
    if key not in table:
        raise DataError(
            f"{where}: class {key!r} is not a class of {ctx.info.title} in the synthshot registry; "
            "the files are of another version of the dataset"
        )
    return table[key]


def _expect_names(found: list[str], ctx: SplitContext, where: str, key=lambda c: c.official) -> None:
    """The dataset's own class list must equal the registry's, in order."""
    expected = [key(c) for c in ctx.info.classes]
    if found != expected:
        diff = [f"#{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(found, expected)) if a != b][:3]
        raise DataError(
            f"{where} lists {len(found)} classes that differ from the registry's {len(expected)} "
            f"({'; '.join(diff) or 'different length'}): the files are of another version of {ctx.info.title}"
        )


def carve_val(rows: list[tuple[str, int]], fraction: float) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Move ``round(fraction * n)`` (at least 1 when n >= 2) of each class's images to val.

    The choice depends only on the class label and its file names (a RNG seeded with
    sha256(VAL_SEED:label) shuffles the sorted paths), so it is the same on every machine.
    """
    by_label: dict[int, list[str]] = defaultdict(list)
    for path, label in rows:
        by_label[label].append(path)
    val_paths: set[str] = set()
    for label, paths in by_label.items():
        order = sorted(paths)
        seed = int.from_bytes(hashlib.sha256(f"{VAL_SEED}:{label}".encode()).digest()[:8], "big")
        random.Random(seed).shuffle(order)
        n_val = max(1, round(len(order) * fraction)) if len(order) >= 2 else 0
        val_paths.update(order[:n_val])
    train = [r for r in rows if r[0] not in val_paths]
    val = [r for r in rows if r[0] in val_paths]
    return train, val


# -- readers ------------------------------------------------------------------------------------


def read_coop_json(ctx: SplitContext) -> Rows:
    """A CoOp ``split_zhou_*.json``: checked row by row against the registry."""
    path = ctx.files[ctx.protocol.options["file"]]
    image_root = ctx.protocol.options.get("image_root", "")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"split file {path} is not valid JSON ({exc}): delete it and run prepare again") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in SPLITS):
        raise DataError(f"split file {path} is not a CoOp split (train/val/test lists): delete it and run prepare again")
    num = ctx.info.num_classes
    seen: dict[int, tuple[str, str]] = {}
    rows: Rows = {}
    for split in SPLITS:
        out = []
        for i, row in enumerate(data[split]):
            where = f"split file {path}, {split}[{i}]"
            if not (isinstance(row, list) and len(row) == 3):
                raise DataError(f"{where}: expected [path, label, classname], got {row!r}")
            rel, label, name = row
            if not isinstance(label, int) or isinstance(label, bool) or not isinstance(name, str):
                raise DataError(f"{where}: expected [path, int label, class name], got {row!r}")
            if not 0 <= label < num:
                raise DataError(
                    f"{where}: label {label} is out of range 0..{num - 1} ({ctx.info.title} has {num} classes); "
                    "the split file is damaged or belongs to another dataset"
                )
            first = seen.setdefault(label, (name, f"{split}[{i}]"))
            if first[0] != name:
                raise DataError(
                    f"{where}: label {label} is named {name!r} here but {first[0]!r} at {first[1]}; "
                    "a label must have one class name: the split file is damaged"
                )
            rel = relative_path(rel, where)
            out.append(((PurePosixPath(image_root) / rel).as_posix() if image_root else rel, label))
        rows[split] = out
    wrong = [
        f"label {label}: {name!r} (registry: {ctx.info.classes[label].name!r})"
        for label, (name, _) in sorted(seen.items())
        if _norm(name) != _norm(ctx.info.classes[label].name)
    ]
    if wrong:
        raise DataError(
            f"split file {path} names {len(wrong)} classes differently from the synthshot registry "
            f"({'; '.join(wrong[:3])}): it is not the published CoOp split of {ctx.info.title}"
        )
    return rows


def read_aircraft_variants(ctx: SplitContext) -> Rows:
    _expect_names(_lines(ctx.tree / "variants.txt"), ctx, str(ctx.tree / "variants.txt"))
    table = _by_official(ctx)
    rows: Rows = {}
    for split in SPLITS:
        listing = ctx.tree / f"images_variant_{split}.txt"
        out = []
        for line in _lines(listing):
            image, _, variant = line.partition(" ")
            out.append((f"images/{image}.jpg", _label_of(table, variant, str(listing), ctx)))
        rows[split] = out
    return rows


def read_dtd_labels(ctx: SplitContext) -> Rows:
    partition = int(ctx.protocol.options.get("partition", 1))
    table = _by_official(ctx)
    rows: Rows = {}
    for split in SPLITS:
        listing = ctx.tree / "labels" / f"{split}{partition}.txt"
        rows[split] = [
            (f"images/{relative_path(line, str(listing))}", _label_of(table, line.split("/")[0], str(listing), ctx))
            for line in _lines(listing)
        ]
    return rows


def read_food_meta(ctx: SplitContext) -> Rows:
    table = _by_official(ctx)
    rows: Rows = {}
    for split, name in (("train", "train.txt"), ("test", "test.txt")):
        listing = ctx.tree / "meta" / name
        rows[split] = [
            (f"images/{relative_path(line, str(listing))}.jpg", _label_of(table, line.split("/")[0], str(listing), ctx))
            for line in _lines(listing)
        ]
    return rows


def read_pets_annotations(ctx: SplitContext) -> Rows:
    rows: Rows = {}
    for split, name in (("train", "trainval.txt"), ("test", "test.txt")):
        listing = ctx.tree / "annotations" / name
        out = []
        for line in _lines(listing):
            if line.startswith("#"):
                continue
            image, class_id = line.split()[:2]
            label = int(class_id) - 1
            official = ctx.info.classes[label].official if 0 <= label < ctx.info.num_classes else None
            if official is None or image.rsplit("_", 1)[0].lower() != official.lower():
                raise DataError(
                    f"{listing}: image {image!r} has class id {class_id}, which the registry does not give to "
                    "this breed: the annotations are of another version of the dataset"
                )
            out.append((f"images/{relative_path(image, str(listing))}.jpg", label))
        rows[split] = out
    return rows


def read_sun_partitions(ctx: SplitContext) -> Rows:
    partition = int(ctx.protocol.options.get("partition", 1))
    table = _by_official(ctx)
    rows: Rows = {}
    for split, name in (("train", f"Training_{partition:02d}.txt"), ("test", f"Testing_{partition:02d}.txt")):
        listing = ctx.tree / name
        rows[split] = [
            (f"SUN397/{relative_path(line.lstrip('/'), str(listing))}",
             _label_of(table, str(PurePosixPath(line).parent), str(listing), ctx))
            for line in _lines(listing)  # lines are "/a/abbey/sun_....jpg", relative to SUN397/
        ]
    return rows


def _scalar(value):
    return value[0] if isinstance(value, list) else value


def read_flowers_setid(ctx: SplitContext) -> Rows:
    labels = read_mat(ctx.files["labels"])["labels"]
    setid = read_mat(ctx.files["setid"])
    rows: Rows = {}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        out = []
        for image_id in setid[key]:
            image_id = int(image_id)
            if not 1 <= image_id <= len(labels):
                raise DataError(f"setid.mat: image id {image_id} has no label in imagelabels.mat: get the original files")
            out.append((f"jpg/image_{image_id:05d}.jpg", int(labels[image_id - 1]) - 1))
        rows[split] = out
    return rows


def read_cars_devkit(ctx: SplitContext) -> Rows:
    meta = ctx.tree / "devkit" / "cars_meta.mat"
    if not meta.is_file():
        raise DataError(f"{meta} is missing: pass car_devkit.tgz (or a copy holding devkit/) with --from-archive")
    _expect_names(list(read_mat(meta)["class_names"]), ctx, str(meta))
    rows: Rows = {}
    for split, folder, annos in (
        ("train", "cars_train", ctx.tree / "devkit" / "cars_train_annos.mat"),
        ("test", "cars_test", ctx.files["test_annos"]),
    ):
        out = []
        for item in read_mat(annos)["annotations"]:
            label = int(_scalar(item["class"])) - 1
            if not 0 <= label < ctx.info.num_classes:
                raise DataError(f"{annos}: class {label + 1} is out of range 1..{ctx.info.num_classes}")
            out.append((f"{folder}/{relative_path(item['fname'], str(annos))}", label))
        rows[split] = out
    return rows


def read_cub_official(ctx: SplitContext) -> Rows:
    classes = [line.split(" ", 1)[1] for line in _lines(ctx.tree / "classes.txt")]
    _expect_names(classes, ctx, str(ctx.tree / "classes.txt"))
    images = dict(line.split(" ", 1) for line in _lines(ctx.tree / "images.txt"))
    labels = dict(line.split(" ", 1) for line in _lines(ctx.tree / "image_class_labels.txt"))
    rows: Rows = {"train": [], "test": []}
    for line in _lines(ctx.tree / "train_test_split.txt"):
        image_id, is_train = line.split()
        where = str(ctx.tree / "images.txt")
        rel = relative_path(images[image_id], where)
        rows["train" if is_train == "1" else "test"].append((f"images/{rel}", int(labels[image_id]) - 1))
    return rows


def read_imagenet_folders(ctx: SplitContext) -> Rows:
    table = _by_official(ctx)
    found: dict[str, list[tuple[str, int]]] = {}
    for folder in ("train", "val"):
        base = ctx.tree / "images" / folder
        if not base.is_dir():
            raise DataError(f"{base} is missing: pass ILSVRC2012_img_{folder}.tar with --from-archive")
        out = []
        for wnid in sorted(e.name for e in os.scandir(base) if e.is_dir()):
            label = _label_of(table, wnid, str(base), ctx)
            names = sorted(e.name for e in os.scandir(base / wnid) if e.is_file() and not e.name.startswith("."))
            out.extend((f"images/{folder}/{wnid}/{n}", label) for n in names)
        found[folder] = out
    return {"train": found["train"], "val": found["val"], "test": found["val"]}


SPLIT_READERS: dict[str, Callable[[SplitContext], Rows]] = {
    "coop_json": read_coop_json,
    "aircraft_variants": read_aircraft_variants,
    "dtd_labels": read_dtd_labels,
    "food_meta": read_food_meta,
    "pets_annotations": read_pets_annotations,
    "sun_partitions": read_sun_partitions,
    "flowers_setid": read_flowers_setid,
    "cars_devkit": read_cars_devkit,
    "cub_official": read_cub_official,
    "imagenet_folders": read_imagenet_folders,
}


def read_split(ctx: SplitContext) -> dict[str, list[list]]:
    """The protocol's split as CoOp rows ``[path, label, registry name]``, val carved where needed."""
    reader = SPLIT_READERS.get(ctx.protocol.kind)
    if reader is None:
        raise DataError(f"dataset registry entry {ctx.source.origin}: unknown split kind {ctx.protocol.kind!r}")
    rows = reader(ctx)
    if ctx.protocol.val_from_train:
        rows["train"], rows["val"] = carve_val(rows["train"], float(ctx.protocol.val_from_train))
    names = [c.name for c in ctx.info.classes]
    return {split: [[path, label, names[label]] for path, label in rows.get(split, [])] for split in SPLITS}


# -- checks -------------------------------------------------------------------------------------


def check_split(tree: Path, split: dict[str, list[list]], protocol: Protocol, info: DatasetInfo, where: str) -> dict[str, int]:
    """Every path on disk, labels in range with one name each, counts and classes as expected.

    Returns the counts per split; raises ``MissingImagesError`` (listing every missing path) or
    ``DataError``.
    """
    num = info.num_classes
    names: dict[int, str] = {}
    for name in SPLITS:
        for i, (path, label, classname) in enumerate(split.get(name, [])):
            if not isinstance(label, int) or not 0 <= label < num:
                raise DataError(f"{where}, {name}[{i}]: label {label!r} is out of range 0..{num - 1}")
            if names.setdefault(label, classname) != classname:
                raise DataError(f"{where}, {name}[{i}]: label {label} is named both {names[label]!r} and {classname!r}")
    paths = sorted({row[0] for rows in split.values() for row in rows})
    missing = [p for p in paths if not (tree / p).is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise MissingImagesError(
            f"{where} names {len(missing)} image(s) that are not in {tree}: {shown}; the archive is incomplete "
            "or of another version than the split",
            missing,
        )
    counts = {name: len(split.get(name, [])) for name in SPLITS}
    counts["train+val"] = counts["train"] + counts["val"]
    wrong = [f"{k}: {counts[k]} (expected {v})" for k, v in protocol.counts.items() if counts.get(k) != v]
    if wrong:
        raise DataError(f"{where} has unexpected split sizes: {', '.join(wrong)}; the files are of another version")
    present = {row[1] for row in split.get("train", [])}
    expected = protocol.classes if protocol.classes is not None else num
    if len(present) != expected:
        absent = [info.classes[i].name for i in range(num) if i not in present][:5]
        raise DataError(
            f"{where}: the train split covers {len(present)} classes, expected {expected} (absent: {', '.join(absent)})"
        )
    return {name: counts[name] for name in SPLITS}


# -- files written from the registry, and tree fix-ups ------------------------------------------


def generate_flowers_cat_to_name(tree: Path, info: DatasetInfo) -> Path:
    path = tree / "cat_to_name.json"
    path.write_text(json.dumps({c.official: c.name for c in info.classes}, indent=1) + "\n", encoding="utf-8")
    return path


def generate_imagenet_classnames_txt(tree: Path, info: DatasetInfo) -> Path:
    path = tree / "classnames.txt"
    path.write_text("".join(f"{c.official} {c.name}\n" for c in info.classes), encoding="utf-8")
    return path


GENERATORS: dict[str, Callable[[Path, DatasetInfo], Path]] = {
    "flowers_cat_to_name": generate_flowers_cat_to_name,
    "imagenet_classnames_txt": generate_imagenet_classnames_txt,
}

_VAL_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$")


def imagenet_val_by_wnid(tree: Path) -> int:
    """Move the flat ``images/val/ILSVRC2012_val_*.JPEG`` into wnid folders (devkit ground truth)."""
    val = tree / "images" / "val"
    flat = sorted(e.name for e in os.scandir(val) if e.is_file() and _VAL_IMAGE.match(e.name)) if val.is_dir() else []
    if not flat:
        return 0
    meta = tree / "devkit" / "data" / "meta.mat"
    truth = tree / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    if not meta.is_file() or not truth.is_file():
        raise DataError("the ImageNet devkit is missing: pass ILSVRC2012_devkit_t12.tar.gz with --from-archive")
    wnid_of = {
        int(_scalar(s["ILSVRC2012_ID"])): s["WNID"]
        for s in read_mat(meta)["synsets"]
        if int(_scalar(s["num_children"])) == 0
    }
    labels = [int(x) for x in _lines(truth)]
    for name in flat:
        number = int(_VAL_IMAGE.match(name).group(1))
        if not 1 <= number <= len(labels) or labels[number - 1] not in wnid_of:
            raise DataError(f"{truth} gives no class for {name}: the devkit and the validation archive do not match")
        target = val / wnid_of[labels[number - 1]]
        target.mkdir(exist_ok=True)
        os.replace(val / name, target / name)
    return len(flat)


POSTPROCESS: dict[str, Callable[[Path], int]] = {"imagenet_val_by_wnid": imagenet_val_by_wnid}
