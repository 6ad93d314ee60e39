"""Small copies of the 11 benchmarks, laid out exactly as ``synthshot datasets prepare`` lays them out.

``make_prepared_dataset(name, root)`` draws tiny upstream files in the dataset's real internal
layout (the authors' archives, the CoOp ``split_zhou_*.json``, the ``.mat`` files) with K real
classes of the synthshot registry and a few small drawn images per class, then runs the real
``prepare_dataset`` on them, offline. So the tree, ``synthshot/split_<protocol>.json``,
``classnames.json``, ``templates.json``, ``manifest.json`` and the peers' files are written by
prepare itself: a change of layout or format there shows up here.

Where things go, for ``root`` the folder the presets' relative ``data.root`` is read from:

* ``root/data/<dir>``: the dataset (``data/dtd``, ``data/food-101``, ``data/CUB_200_2011``...), the
  same relative folder as the presets' ``data.root``; the prepare root (``--root``) is ``root/data``.
* ``root/data/.cache/<name>/``: the tiny downloads, where prepare keeps them (automatic datasets).
* ``root/.prepared-datasets/registry/<name>.json``: the registry entry prepare ran with (the
  built-in one with the tiny files' sizes and hashes, no URLs, and the tiny split sizes). ``verify``
  needs it (``--registry``): it checks the split sizes against the registry's published counts.
* ``root/.prepared-datasets/downloads/<name>/``: the user's files of the manual datasets (ImageNet,
  Stanford Cars), passed to prepare with ``--from-archive`` as the docs say.

Split sizes: ``train``/``val``/``test`` images per class, except where prepare's protocol fixes
them otherwise (:func:`split_sizes`): ImageNet's val and test are the same validation images
(``max(val, test)`` per class), and CUB's val is carved from its official train list by prepare
(the smallest list giving at least ``train`` train and ``val`` val images per class).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from datasets_upstream import lines, mat_bytes, tar_bytes, zip_bytes  # the prepare tests' archive writers

from synthshot.config import expand_presets, list_presets, preset_path, read_yaml
from synthshot.data.registry import DatasetInfo, get_dataset
from synthshot.datasets.download import HttpOptions
from synthshot.datasets.layouts import carve_val
from synthshot.datasets.prepare import prepare_dataset
from synthshot.datasets.registry import DatasetSource, parse_source

HELPER_DIR = ".prepared-datasets"  # under root: the registry entries and the manual datasets' files
DEFAULT_PREPARE_ROOT = "data"  # the presets' data.root is data/<dir>: `prepare NAME --root data`


# -- the presets --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def preset_data() -> dict[str, dict]:
    """preset name -> its ``data`` section with the base presets expanded (``dataset``, ``root``,
    ``layout``...), for every preset that sets ``data.root``; read from the YAML files."""
    out = {}
    for preset in list_presets():
        data = expand_presets(read_yaml(preset_path(preset))).get("data") or {}
        if data.get("root") is not None:
            out[preset] = dict(data)
    return out


def preset_data_roots() -> dict[str, Path]:
    """preset name -> its relative ``data.root`` (``dipsy-dtd`` -> ``data/dtd``)."""
    return {preset: Path(data["root"]) for preset, data in preset_data().items()}


PRESET_DATA_ROOTS: dict[str, Path] = preset_data_roots()


def presets_of(name: str) -> list[str]:
    """The presets whose ``data.dataset`` is ``name``."""
    return sorted(p for p, data in preset_data().items() if data.get("dataset") == name)


def _prepare_root_rel(name: str) -> Path:
    """Where ``prepare --root`` points, relative to ``root``: the parent of the presets' data.root."""
    parents = {PRESET_DATA_ROOTS[p].parent for p in presets_of(name)}
    if len(parents) > 1:
        raise ValueError(f"the presets of {name} put its folder under different roots: {sorted(map(str, parents))}")
    return parents.pop() if parents else Path(DEFAULT_PREPARE_ROOT)


def prepare_root(root: str | Path, name: str) -> Path:
    """The ``--root`` prepare runs with (and verify needs): ``root/data``."""
    return Path(root) / _prepare_root_rel(name)


def registry_dir(root: str | Path) -> Path:
    """The ``--registry`` folder prepare ran with (verify needs it: see the module docstring)."""
    return Path(root) / HELPER_DIR / "registry"


def verify_prepared(name: str, root: str | Path, **kwargs):
    """``synthshot datasets verify NAME --root <root>/data --registry <registry_dir(root)>``."""
    from synthshot.datasets.verify import verify_dataset

    kwargs.setdefault("echo", lambda *a: None)
    return verify_dataset(name, prepare_root(root, name), registry_dir=registry_dir(root), **kwargs)


# -- the images ---------------------------------------------------------------------------------

SHAPES = ("disc", "square", "triangle", "diamond", "cross", "ring")


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct background colour per label (hues a golden angle apart)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.61803398875) % 1.0, 0.75, 0.9 if label % 2 == 0 else 0.6)
    return round(r * 255), round(g * 255), round(b * 255)


def draw_image(label: int, index: int, *, size: int = 32, seed: int = 0, salt: str = "") -> bytes:
    """A small JPEG: the class's colour and shape (``SHAPES[label % 6]``), placed and noised per
    image; the same bytes for the same arguments."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, label, index, zlib.crc32(salt.encode())])
    bg = class_colour(label)
    fg = tuple(255 - c for c in bg)
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    r = size * rng.uniform(0.2, 0.3)
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    box = [cx - r, cy - r, cx + r, cy + r]
    shape = SHAPES[label % len(SHAPES)]
    if shape == "disc":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fg)
    elif shape == "cross":
        w = max(1.0, r / 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    else:
        draw.ellipse(box, outline=fg, width=max(1, round(r / 3)))
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-10, 11, (size, size, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# -- split sizes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerClass:
    """Images per class: in the upstream files (``upstream``: the official train list where prepare
    carves val from it) and in each split prepare writes."""

    train: int
    val: int
    test: int
    upstream: int  # images per class in the list prepare reads train (and, carved, val) from


def _per_class(source: DatasetSource, train: int, val: int, test: int) -> PerClass:
    proto = source.protocol(None)
    if proto.kind == "imagenet_folders":  # val = test = the validation images
        n = max(val, test)
        return PerClass(train, n, n, train)
    if proto.val_from_train:  # prepare moves a fraction of each class's train images to val
        fraction = float(proto.val_from_train)
        for n in range(max(train, 1), 100 * (train + val + 1)):
            kept, carved = carve_val([(str(i), 0) for i in range(n)], fraction)
            if len(kept) >= train and len(carved) >= val:
                return PerClass(len(kept), len(carved), test, n)
        raise ValueError(f"no train list size gives {train} train and {val} val images with val_from_train={fraction}")
    return PerClass(train, val, test, train + val)


def split_sizes(name: str, *, classes: int = 3, train: int = 4, val: int = 2, test: int = 2) -> dict[str, int]:
    """Images per split in the split file ``make_prepared_dataset`` gets from prepare."""
    n = _per_class(builtin_source(name), train, val, test)
    return {"train": classes * n.train, "val": classes * n.val, "test": classes * n.test}


# -- the upstream files, dataset by dataset -----------------------------------------------------


@dataclass
class Upstream:
    files: dict[str, bytes]  # registry file id -> bytes
    nested: dict[str, dict[str, bytes]] = field(default_factory=dict)  # file id -> {member: inner archive}


@dataclass
class Plan:
    info: DatasetInfo
    k: int
    n: PerClass
    image: Callable[[int, int], bytes]  # (label, index) -> JPEG bytes

    def split_of(self, i: int) -> str:
        """The split of a class's i-th image (train first, then val, then test)."""
        return "train" if i < self.n.train else "val" if i < self.n.train + self.n.val else "test"

    def total(self) -> int:
        return self.n.train + self.n.val + self.n.test

    def official(self, label: int) -> str:
        return self.info.classes[label].official

    def coop_json(self, paths: dict[int, list[str]]) -> bytes:
        """A CoOp ``split_zhou_*.json``: ``[path, label, class name]`` rows, as CoOp writes them."""
        rows = {"train": [], "val": [], "test": []}
        for label, items in paths.items():
            for i, rel in enumerate(items):
                rows[self.split_of(i)].append([rel, label, self.info.classes[label].name])
        return json.dumps(rows, indent=4).encode()


def _dtd(p: Plan) -> Upstream:
    members, paths, listing = {}, {}, {"train": [], "val": [], "test": []}
    for label in range(p.k):
        c = p.official(label)
        paths[label] = [f"{c}/{c}_{i + 1:04d}.jpg" for i in range(p.total())]
        for i, rel in enumerate(paths[label]):
            members[f"dtd/images/{rel}"] = p.image(label, i)
            listing[p.split_of(i)].append(rel)
    for split, items in listing.items():  # the official partition 1 (not what the coop split reads)
        members[f"dtd/labels/{split}1.txt"] = lines(items)
    return Upstream({"archive": tar_bytes(members), "split_coop": p.coop_json(paths)})


def _food101(p: Plan) -> Upstream:
    members, paths, train, test = {}, {}, [], []
    for label in range(p.k):
        c = p.official(label)
        ids = [str(1000000 + 1000 * label + i) for i in range(p.total())]
        paths[label] = [f"{c}/{n}.jpg" for n in ids]
        for i, n in enumerate(ids):
            members[f"food-101/images/{c}/{n}.jpg"] = p.image(label, i)
            (test if p.split_of(i) == "test" else train).append(f"{c}/{n}")
    members["food-101/meta/train.txt"] = lines(train)
    members["food-101/meta/test.txt"] = lines(test)
    members["food-101/meta/classes.txt"] = lines(c.official for c in p.info.classes)
    return Upstream({"archive": tar_bytes(members), "split_coop": p.coop_json(paths)})


def _oxford_pets(p: Plan) -> Upstream:
    images, annos, paths, trainval, test = {}, {}, {}, [], []
    breed_id, seen = {}, {1: 0, 2: 0}
    for c in p.info.classes:  # cat breeds are capitalised (species 1), dog breeds not (species 2)
        species = 1 if c.official[:1].isupper() else 2
        seen[species] += 1
        breed_id[c.label] = (species, seen[species])
    for label in range(p.k):
        c = p.official(label)
        paths[label] = [f"{c}_{i + 1}.jpg" for i in range(p.total())]
        species, breed = breed_id[label]
        for i, rel in enumerate(paths[label]):
            images[f"images/{rel}"] = p.image(label, i)
            (test if p.split_of(i) == "test" else trainval).append(f"{c}_{i + 1} {label + 1} {species} {breed}")
    annos["annotations/trainval.txt"] = lines(trainval)
    annos["annotations/test.txt"] = lines(test)
    annos["annotations/list.txt"] = lines(["#Image CLASS-ID SPECIES BREED ID", *trainval, *test])
    return Upstream({"images": tar_bytes(images), "annotations": tar_bytes(annos), "split_coop": p.coop_json(paths)})


def _sun397(p: Plan) -> Upstream:
    members, paths = {}, {}
    for label in range(p.k):
        folder = p.official(label)[1:]  # "/a/abbey" -> "a/abbey"
        names = []
        for i in range(p.total()):
            digest = hashlib.sha256(f"{label}:{i}".encode()).digest()
            names.append("sun_" + "".join(chr(ord("a") + b % 26) for b in digest[:16]) + ".jpg")
        paths[label] = [f"{folder}/{n}" for n in names]
        for i, rel in enumerate(paths[label]):
            members[f"SUN397/{rel}"] = p.image(label, i)
    members["SUN397/ClassName.txt"] = lines(c.official for c in p.info.classes)
    return Upstream({"archive": tar_bytes(members), "split_coop": p.coop_json(paths)})


def _eurosat(p: Plan) -> Upstream:
    members, paths = {}, {}
    for label in range(p.k):
        f = p.official(label)
        paths[label] = [f"{f}/{f}_{i + 1}.jpg" for i in range(p.total())]
        for i, rel in enumerate(paths[label]):
            members[f"2750/{rel}"] = p.image(label, i)
    return Upstream({"archive": zip_bytes(members), "split_coop": p.coop_json(paths)})


def _fgvc_aircraft(p: Plan) -> Upstream:
    base = "fgvc-aircraft-2013b/data"
    members, listing = {}, {"train": [], "val": [], "test": []}
    for label in range(p.k):
        for i in range(p.total()):
            image_id = 1000000 + 1000 * label + i
            members[f"{base}/images/{image_id}.jpg"] = p.image(label, i)
            listing[p.split_of(i)].append(f"{image_id} {p.official(label)}")
    members[f"{base}/variants.txt"] = lines(c.official for c in p.info.classes)
    for split, items in listing.items():
        members[f"{base}/images_variant_{split}.txt"] = lines(items)
    members[f"{base}/images_variant_trainval.txt"] = lines(listing["train"] + listing["val"])
    return Upstream({"archive": tar_bytes(members)})


def _oxford_flowers(p: Plan) -> Upstream:
    members, paths, labels = {}, {}, []
    for label in range(p.k):
        paths[label] = []
        for i in range(p.total()):
            labels.append(label + 1)
            rel = f"image_{len(labels):05d}.jpg"
            members[f"jpg/{rel}"] = p.image(label, i)
            paths[label].append(rel)
    return Upstream({"images": tar_bytes(members), "labels": mat_bytes({"labels": labels}),
                     "split_coop": p.coop_json(paths)})


def _caltech101(p: Plan) -> Upstream:
    inner_members, paths = {}, {}
    for label in range(p.k):
        f = p.official(label)
        paths[label] = [f"{f}/image_{i + 1:04d}.jpg" for i in range(p.total())]
        for i, rel in enumerate(paths[label]):
            inner_members[f"101_ObjectCategories/{rel}"] = p.image(label, i)
    inner = tar_bytes(inner_members)
    member = "caltech-101/101_ObjectCategories.tar.gz"
    return Upstream({"archive": zip_bytes({member: inner}), "split_coop": p.coop_json(paths)},
                    nested={"archive": {member: inner}})


def _cub(p: Plan) -> Upstream:
    members, images, labels, split = {}, [], [], []
    for label in range(p.k):
        folder = p.official(label)  # "001.Black_footed_Albatross"
        for i in range(p.n.upstream + p.n.test):
            image_id = len(images) + 1
            rel = f"{folder}/{folder.split('.', 1)[1]}_{i + 1:04d}_{image_id}.jpg"
            members[f"CUB_200_2011/images/{rel}"] = p.image(label, i)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label + 1}")
            split.append(f"{image_id} {1 if i < p.n.upstream else 0}")
    members["CUB_200_2011/images.txt"] = lines(images)
    members["CUB_200_2011/image_class_labels.txt"] = lines(labels)
    members["CUB_200_2011/train_test_split.txt"] = lines(split)
    members["CUB_200_2011/classes.txt"] = lines(f"{c.label + 1} {c.official}" for c in p.info.classes)
    return Upstream({"archive": tar_bytes(members)})


def _imagenet(p: Plan) -> Upstream:
    train_members = {}
    for label in range(p.k):
        wnid = p.official(label)
        inner = {f"{wnid}_{10000 + i}.JPEG": p.image(label, i) for i in range(p.n.train)}
        train_members[f"{wnid}.tar"] = tar_bytes(inner, mode="w")
    # the validation images are flat, classes interleaved; the devkit's ground truth places them.
    # ILSVRC2012_ID here is label + 1 (the real ids follow another order; only the devkit uses them).
    val_members, truth = {}, []
    for i in range(p.n.val):
        for label in range(p.k):
            truth.append(label + 1)
            val_members[f"ILSVRC2012_val_{len(truth):08d}.JPEG"] = p.image(label, p.n.train + i)
    synsets = [
        {"ILSVRC2012_ID": float(label + 1), "WNID": p.official(label), "words": p.info.classes[label].name,
         "gloss": "-", "num_children": 0.0, "children": [], "wordnet_height": 0.0,
         "num_train_images": float(p.n.train)}
        for label in range(p.k)
    ]
    devkit = {
        "ILSVRC2012_devkit_t12/data/meta.mat": mat_bytes({"synsets": synsets}, compress=True),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": lines(str(t) for t in truth),
    }
    return Upstream({"train": tar_bytes(train_members, mode="w"), "val": tar_bytes(val_members, mode="w"),
                     "devkit": tar_bytes(devkit)})


def _stanford_cars(p: Plan) -> Upstream:
    train_members, test_members, paths = {}, {}, {}
    for label in range(p.k):
        paths[label] = []
        for i in range(p.total()):
            if p.split_of(i) == "test":
                rel = f"cars_test/{len(test_members) + 1:05d}.jpg"
                test_members[rel] = p.image(label, i)
            else:
                rel = f"cars_train/{len(train_members) + 1:05d}.jpg"
                train_members[rel] = p.image(label, i)
            paths[label].append(rel)
    return Upstream({"train_images": tar_bytes(train_members), "test_images": tar_bytes(test_members),
                     "split_coop": p.coop_json(paths)})


BUILDERS = {
    "dtd": _dtd, "food101": _food101, "oxford_pets": _oxford_pets, "sun397": _sun397, "eurosat": _eurosat,
    "fgvc_aircraft": _fgvc_aircraft, "oxford_flowers": _oxford_flowers, "caltech101": _caltech101, "cub": _cub,
    "imagenet": _imagenet, "stanford_cars": _stanford_cars,
}
DATASETS = sorted(BUILDERS)


# -- the registry entry prepare runs with -------------------------------------------------------


def _pin(spec: dict, data: bytes) -> None:
    """The tiny file's size and digests where the built-in entry pins them (a file the real registry
    leaves unpinned, like the CoOp split files, stays unpinned: prepare records it as unverified)."""
    if spec.get("size") is not None:
        spec["size"] = len(data)
    if spec.get("md5"):
        spec["md5"] = hashlib.md5(data).hexdigest()
    if spec.get("sha256"):
        spec["sha256"] = hashlib.sha256(data).hexdigest()


def builtin_entry(name: str) -> dict:
    """The built-in registry entry (never an override from $SYNTHSHOT_DATASETS_REGISTRY)."""
    text = resources.files("synthshot.datasets").joinpath(f"sources/{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


def builtin_source(name: str) -> DatasetSource:
    return parse_source(builtin_entry(name), f"synthshot/datasets/sources/{name}.json")


def registry_entry(name: str, upstream: Upstream, counts: dict[str, int], classes: int) -> dict:
    """The built-in entry with the tiny files' sizes and digests, no URLs (nothing is fetched), and
    the tiny split sizes and class count for the default protocol."""
    entry = builtin_entry(name)
    for spec in entry["files"]:
        spec["urls"] = []
        if spec["id"] in upstream.files:
            _pin(spec, upstream.files[spec["id"]])
        for rule in spec.get("extract", []):
            if "nested" in rule and rule["from"] in upstream.nested.get(spec["id"], {}):
                _pin(rule["nested"], upstream.nested[spec["id"]][rule["from"]])
    proto = entry["protocols"][entry.get("default_protocol", "coop")]
    proto["counts"] = {key: sum(counts[part] for part in key.split("+")) for key in proto["counts"]}
    proto["classes"] = classes
    return entry


# -- the dataset --------------------------------------------------------------------------------


def make_prepared_dataset(
    name: str,
    root: Path,
    *,
    classes: int = 3,
    train: int = 4,
    val: int = 2,
    test: int = 2,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Draw a small ``name`` under ``root`` and prepare it; returns the dataset folder, the folder the
    presets' ``data.root`` names under ``root`` (``root/data/dtd``). See the module docstring."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    source = builtin_source(name)
    info = get_dataset(name)
    if not 1 <= classes <= info.num_classes:
        raise ValueError(f"classes must be 1..{info.num_classes} for {name}, got {classes}")
    if min(train, val, test) < 0 or train < 1:
        raise ValueError(f"need train >= 1 and val, test >= 0 images per class, got {train}/{val}/{test}")
    root = Path(root).absolute()
    data_root = prepare_root(root, name)
    if (data_root / source.dir).exists():
        raise FileExistsError(f"{data_root / source.dir} exists: use a fresh root")

    n = _per_class(source, train, val, test)
    plan = Plan(info, classes, n, lambda label, i: draw_image(label, i, size=size, seed=seed, salt=name))
    upstream = BUILDERS[name](plan)
    counts = split_sizes(name, classes=classes, train=train, val=val, test=test)
    registry = registry_dir(root)
    registry.mkdir(parents=True, exist_ok=True)
    (registry / f"{name}.json").write_text(json.dumps(registry_entry(name, upstream, counts, classes), indent=1),
                                           encoding="utf-8")

    by_id = {f.id: f.filename for f in source.files}
    user = []
    for file_id, data in upstream.files.items():
        if source.mode == "manual":  # the user's own files, passed with --from-archive
            path = root / HELPER_DIR / "downloads" / name / by_id[file_id]
            user.append(path)
        else:  # where prepare keeps its downloads: it verifies them and makes no request
            path = data_root / ".cache" / name / by_id[file_id]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    result = prepare_dataset(name, data_root, from_archives=user, registry_dir=registry,
                             http=HttpOptions(progress=False), echo=lambda *a: None)
    if result.counts != counts:
        raise AssertionError(f"prepare wrote {result.counts} for {name}, expected {counts}")
    return result.folder

