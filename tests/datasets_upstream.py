"""Tiny copies of the 11 benchmarks' upstream files, in their real internal layouts, and a real
HTTP server on loopback that serves them (Range, redirects, 404, HTML interstitials, dropped
connections). Used by tests/test_datasets_*.py; everything is built at test time.

Each builder returns the files a dataset's registry entry lists (``filename -> bytes``), the split
sizes they give per protocol, and the registry entry rewritten to point at the local server with
the tiny files' real hashes (``registry_entry``).
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources

from synthshot.data.registry import get_dataset
from synthshot.datasets.mat import write_mat

# -- archive helpers ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 60, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def image(i: int) -> bytes:
    """A distinct small JPEG (a comment segment keeps the bytes apart)."""
    data = jpeg()
    return data[:2] + b"\xff\xfe" + (len(str(i)) + 2).to_bytes(2, "big") + str(i).encode() + data[2:]


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz", dirs: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def mat_bytes(variables: dict, compress: bool = False) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mat"
        write_mat(path, variables, compress=compress)
        return path.read_bytes()


def lines(items) -> bytes:
    return ("\n".join(items) + "\n").encode()


def coop_json(rows_by_split: dict[str, list[list]]) -> bytes:
    return json.dumps(rows_by_split, indent=4).encode()


def coop_rows(per_class: dict[int, list[str]], raw_name, n_train: int = 3, n_val: int = 1) -> dict[str, list[list]]:
    """CoOp-style rows: per class the first n_train images train, the next n_val val, the rest test."""
    out = {"train": [], "val": [], "test": []}
    for label, paths in per_class.items():
        for i, p in enumerate(paths):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            out[split].append([p, label, raw_name(label)])
    return out


def counts(rows: dict[str, list]) -> dict[str, int]:
    return {k: len(v) for k, v in rows.items()}


# -- the datasets -------------------------------------------------------------------------------


@dataclass
class Upstream:
    name: str
    files: dict[str, bytes]  # filename -> bytes (what the server or the user has)
    counts: dict[str, dict[str, int]]  # protocol -> expected split sizes
    classes: int  # classes present in the tiny train split
    nested: dict[str, dict[str, bytes]] = field(default_factory=dict)  # file id -> {inner member: bytes}
    user_files: tuple[str, ...] = ()  # manual files the user passes with --from-archive

    def registry_entry(self, base_url: str) -> dict:
        """The built-in entry, pointing at ``base_url`` with the tiny files' real hashes and sizes."""
        entry = json.loads(resources.files("synthshot.datasets").joinpath(f"sources/{self.name}.json").read_text())
        for spec in entry["files"]:
            data = self.files[spec["filename"]]
            spec["size"] = len(data)
            spec["md5"] = hashlib.md5(data).hexdigest()
            spec["sha256"] = hashlib.sha256(data).hexdigest()
            if spec["filename"] in self.user_files:
                spec["urls"] = []
            else:  # a dead link first, then a redirect to the file: both must be handled
                spec["urls"] = [
                    f"{base_url}/missing/{self.name}/{spec['filename']}",
                    f"{base_url}/redirect/files/{self.name}/{spec['filename']}",
                ]
            for rule in spec.get("extract", []):
                if "nested" in rule and spec["id"] in self.nested:
                    inner = self.nested[spec["id"]][rule["from"]]
                    rule["nested"].update(
                        size=len(inner), md5=hashlib.md5(inner).hexdigest(), sha256=hashlib.sha256(inner).hexdigest()
                    )
        for proto, expected in self.counts.items():
            entry["protocols"][proto]["counts"] = expected
            entry["protocols"][proto]["classes"] = self.classes
        return entry


def _dtd() -> Upstream:
    info = get_dataset("dtd")
    names = [info.classes[i].official for i in range(3)]
    members, per_class, labels = {}, {}, {"train": [], "val": [], "test": []}
    n = 0
    for label, c in enumerate(names):
        per_class[label] = []
        for i in range(1, 7):
            n += 1
            members[f"dtd/images/{c}/{c}_{i:04d}.jpg"] = image(n)
            per_class[label].append(f"{c}/{c}_{i:04d}.jpg")
            labels[("train", "val", "test")[(i - 1) // 2]].append(f"{c}/{c}_{i:04d}.jpg")
    for split, items in labels.items():
        members[f"dtd/labels/{split}1.txt"] = lines(items)
    members["dtd/labels/labels_joint_anno.txt"] = lines(f"{p} {p.split('/')[0]}" for p in per_class[0])
    members["dtd/imdb/imdb.mat"] = mat_bytes({"images": [1.0, 2.0]})
    rows = coop_rows(per_class, lambda label: names[label])
    return Upstream(
        "dtd",
        {"dtd-r1.0.1.tar.gz": tar_bytes(members, dirs=("dtd/", "dtd/images/")),
         "split_zhou_DescribableTextures.json": coop_json(rows)},
        {"coop": counts(rows), "official": {"train": 6, "val": 6, "test": 6}},
        3,
    )


def _food101() -> Upstream:
    info = get_dataset("food101")
    names = [info.classes[i].official for i in range(3)]
    members, per_class, train, test = {}, {}, [], []
    n = 0
    for label, c in enumerate(names):
        per_class[label] = []
        for i in range(5):
            n += 1
            members[f"food-101/images/{c}/{1000 + n}.jpg"] = image(n)
            per_class[label].append(f"{c}/{1000 + n}.jpg")
            (train if i < 3 else test).append(f"{c}/{1000 + n}")
    members["food-101/meta/train.txt"] = lines(train)
    members["food-101/meta/test.txt"] = lines(test)
    members["food-101/meta/classes.txt"] = lines(names)
    members["food-101/license_agreement.txt"] = b"research use only\n"
    members["food-101/README.txt"] = b"Food-101\n"
    rows = coop_rows(per_class, lambda label: names[label])
    return Upstream(
        "food101",
        {"food-101.tar.gz": tar_bytes(members), "split_zhou_Food101.json": coop_json(rows)},
        {"coop": counts(rows), "official": {"train+val": 9, "test": 6}},
        3,
    )


def _oxford_pets() -> Upstream:
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2)]
    images, annos, per_class, trainval, test = {}, {}, {}, [], []
    n = 0
    for breed, class_id, species in breeds:
        per_class[class_id - 1] = []
        for i in range(1, 6):
            n += 1
            images[f"images/{breed}_{i}.jpg"] = image(n)
            per_class[class_id - 1].append(f"{breed}_{i}.jpg")
            (trainval if i <= 3 else test).append(f"{breed}_{i} {class_id} {species} 1")
            annos[f"annotations/trimaps/{breed}_{i}.png"] = b"\x89PNG"
    images["images/Abyssinian_100.mat"] = b"stray file in the real archive"
    annos["annotations/trainval.txt"] = lines(trainval)
    annos["annotations/test.txt"] = lines(test)
    annos["annotations/list.txt"] = lines(["#Image CLASS-ID SPECIES BREED ID", *trainval, *test])
    annos["annotations/README"] = b"Oxford-IIIT Pet\n"
    rows = coop_rows(per_class, lambda label: breeds[label][0].lower())
    return Upstream(
        "oxford_pets",
        {"images.tar.gz": tar_bytes(images), "annotations.tar.gz": tar_bytes(annos),
         "split_zhou_OxfordPets.json": coop_json(rows)},
        {"coop": counts(rows), "official": {"train+val": 6, "test": 4}},
        2,
    )


def _sun397() -> Upstream:
    info = get_dataset("sun397")
    chosen = range(9)  # /a/abbey ... /a/apartment_building/outdoor (label 8: a three-part path)
    members, per_class, train, test = {}, {}, [], []
    n = 0
    for label in chosen:
        official = info.classes[label].official
        per_class[label] = []
        for i in range(5):
            n += 1
            rel = f"{official[1:]}/sun_{'abcdefghij'[i]}{n:04d}.jpg"
            members[f"SUN397/{rel}"] = image(n)
            per_class[label].append(rel)
            (train if i < 3 else test).append(f"/{rel}")
    members["SUN397/ClassName.txt"] = lines(c.official for c in info.classes)
    members["SUN397/README.txt"] = b"SUN397\n"
    partitions = {"Partitions/Training_01.txt": lines(train), "Partitions/Testing_01.txt": lines(test),
                  "Partitions/ClassName.txt": lines(c.official for c in info.classes),
                  "__MACOSX/Partitions/._Training_01.txt": b"resource fork"}

    def raw(label):  # CoOp: drop the letter, reverse the parts, keep the underscores
        return " ".join(info.classes[label].official.split("/")[2:][::-1])

    rows = coop_rows(per_class, raw)
    return Upstream(
        "sun397",
        {"SUN397.tar.gz": tar_bytes(members), "Partitions.zip": zip_bytes(partitions),
         "split_zhou_SUN397.json": coop_json(rows)},
        {"coop": counts(rows), "official": {"train+val": 27, "test": 18}},
        9,
    )


def _eurosat() -> Upstream:
    info = get_dataset("eurosat")
    chosen = range(3)  # AnnualCrop, Forest, HerbaceousVegetation (CoOp renames them)
    members, per_class = {}, {}
    n = 0
    for label in chosen:
        folder = info.classes[label].official
        per_class[label] = []
        for i in range(1, 6):
            n += 1
            members[f"2750/{folder}/{folder}_{i}.jpg"] = image(n)
            per_class[label].append(f"{folder}/{folder}_{i}.jpg")
    rows = coop_rows(per_class, lambda label: info.classes[label].name)
    return Upstream(
        "eurosat",
        {"EuroSAT.zip": zip_bytes(members), "split_zhou_EuroSAT.json": coop_json(rows)},
        {"coop": counts(rows)},
        3,
    )


def _fgvc_aircraft() -> Upstream:
    info = get_dataset("fgvc_aircraft")
    chosen = range(3)  # 707-320, 727-200, 737-200
    base = "fgvc-aircraft-2013b/data"
    members, listing = {}, {"train": [], "val": [], "test": []}
    n = 0
    for label in chosen:
        for i in range(3):
            n += 1
            members[f"{base}/images/{1000000 + n}.jpg"] = image(n)
            listing[("train", "val", "test")[i]].append(f"{1000000 + n} {info.classes[label].official}")
    members[f"{base}/variants.txt"] = lines(c.official for c in info.classes)
    for split, items in listing.items():
        members[f"{base}/images_variant_{split}.txt"] = lines(items)
    members[f"{base}/images_variant_trainval.txt"] = lines(listing["train"] + listing["val"])
    members[f"{base}/families.txt"] = b"Boeing 707\n"
    members["fgvc-aircraft-2013b/evaluation.m"] = b"% not kept\n"
    members["fgvc-aircraft-2013b/README.md"] = b"# FGVC-Aircraft\n"
    expected = {"train": 3, "val": 3, "test": 3}
    return Upstream("fgvc_aircraft", {"fgvc-aircraft-2013b.tar.gz": tar_bytes(members)},
                    {"coop": expected, "official": expected}, 3)


def _oxford_flowers() -> Upstream:
    info = get_dataset("oxford_flowers")
    members, per_class, labels = {}, {0: [], 1: []}, []
    for image_id in range(1, 13):
        label = (image_id - 1) % 2
        members[f"jpg/image_{image_id:05d}.jpg"] = image(image_id)
        per_class[label].append(f"image_{image_id:05d}.jpg")
        labels.append(label + 1)
    rows = coop_rows(per_class, lambda label: info.classes[label].name)
    return Upstream(
        "oxford_flowers",
        {
            "102flowers.tgz": tar_bytes(members),
            "imagelabels.mat": mat_bytes({"labels": labels}),
            "setid.mat": mat_bytes({"trnid": [1, 2, 3, 4], "valid": [5, 6, 7, 8], "tstid": [9, 10, 11, 12]}, compress=True),
            "split_zhou_OxfordFlowers.json": coop_json(rows),
        },
        {"coop": counts(rows), "official": {"train": 4, "val": 4, "test": 4}},
        2,
    )


def _caltech101() -> Upstream:
    info = get_dataset("caltech101")
    chosen = range(4)  # Faces, Leopards, Motorbikes (renamed by CoOp), accordion
    inner_members, per_class = {}, {}
    n = 0
    for label in chosen:
        folder = info.classes[label].official
        per_class[label] = []
        for i in range(1, 6):
            n += 1
            inner_members[f"101_ObjectCategories/{folder}/image_{i:04d}.jpg"] = image(n)
            per_class[label].append(f"{folder}/image_{i:04d}.jpg")
    inner_members["101_ObjectCategories/BACKGROUND_Google/image_0001.jpg"] = image(99)
    inner = tar_bytes(inner_members)
    outer = zip_bytes({
        "caltech-101/101_ObjectCategories.tar.gz": inner,
        "caltech-101/Annotations.tar": tar_bytes({"Annotations/Faces_2/annotation_0001.mat": b"x"}, mode="w"),
        "caltech-101/show_annotation.m": b"% matlab\n",
        "__MACOSX/caltech-101/._101_ObjectCategories.tar.gz": b"resource fork",
    })
    rows = coop_rows(per_class, lambda label: info.classes[label].name)
    return Upstream(
        "caltech101",
        {"caltech-101.zip": outer, "split_zhou_Caltech101.json": coop_json(rows)},
        {"coop": counts(rows)},
        4,
        nested={"archive": {"caltech-101/101_ObjectCategories.tar.gz": inner}},
    )


def _cub() -> Upstream:
    info = get_dataset("cub")
    members, images, labels, split = {}, [], [], []
    image_id = 0
    for label in (0, 1):
        folder = info.classes[label].official
        for i in range(6):
            image_id += 1
            rel = f"{folder}/{folder.split('.', 1)[1]}_{i:04d}_{image_id}.jpg"
            members[f"CUB_200_2011/images/{rel}"] = image(image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {label + 1}")
            split.append(f"{image_id} {1 if i < 4 else 0}")
    members["CUB_200_2011/images.txt"] = lines(images)
    members["CUB_200_2011/image_class_labels.txt"] = lines(labels)
    members["CUB_200_2011/train_test_split.txt"] = lines(split)
    members["CUB_200_2011/classes.txt"] = lines(f"{c.label + 1} {c.official}" for c in info.classes)
    members["CUB_200_2011/bounding_boxes.txt"] = lines(f"{i} 0 0 8 8" for i in range(1, image_id + 1))
    members["attributes.txt"] = b"1 has_bill_shape::curved\n"
    return Upstream("cub", {"CUB_200_2011.tgz": tar_bytes(members)}, {"official": {"train+val": 8, "test": 4}}, 2)


def _imagenet() -> Upstream:
    info = get_dataset("imagenet")
    wnids = [info.classes[0].official, info.classes[1].official]  # n01440764 (tench), n01443537 (goldfish)
    train_members = {}
    n = 0
    for wnid in wnids:
        inner = {}
        for i in range(3):
            n += 1
            inner[f"{wnid}_{100 + i}.JPEG"] = image(n)
        train_members[f"{wnid}.tar"] = tar_bytes(inner, mode="w")
    val_members = {f"ILSVRC2012_val_{i:08d}.JPEG": image(100 + i) for i in range(1, 5)}
    ilsvrc_id = {wnids[0]: 449, wnids[1]: 450}
    synsets = [
        {"ILSVRC2012_ID": float(ilsvrc_id[w]), "WNID": w, "words": w, "gloss": "a fish", "num_children": 0.0,
         "children": [], "wordnet_height": 0.0, "num_train_images": 3.0}
        for w in wnids
    ] + [{"ILSVRC2012_ID": 1001.0, "WNID": "n01439121", "words": "fish", "gloss": "-", "num_children": 2.0,
          "children": [449.0, 450.0], "wordnet_height": 1.0, "num_train_images": 0.0}]
    truth = [ilsvrc_id[wnids[i % 2]] for i in range(4)]
    devkit = {
        "ILSVRC2012_devkit_t12/data/meta.mat": mat_bytes({"synsets": synsets}, compress=True),
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": lines(str(t) for t in truth),
        "ILSVRC2012_devkit_t12/readme.txt": b"devkit\n",
    }
    files = {
        "ILSVRC2012_img_train.tar": tar_bytes(train_members, mode="w"),
        "ILSVRC2012_img_val.tar": tar_bytes(val_members, mode="w"),
        "ILSVRC2012_devkit_t12.tar.gz": tar_bytes(devkit),
    }
    expected = {"train": 6, "val": 4, "test": 4}
    return Upstream("imagenet", files, {"coop": expected, "official": expected}, 2, user_files=tuple(files))


def cars_members() -> dict[str, bytes]:
    """The contents of the four original Stanford Cars files, by member path."""
    info = get_dataset("stanford_cars")
    out, train_annos, test_annos = {}, [], []
    for i in range(1, 11):
        label = 1 if i % 2 else 2
        out[f"cars_train/{i:05d}.jpg"] = image(i)
        train_annos.append({"bbox_x1": 1.0, "bbox_y1": 1.0, "bbox_x2": 7.0, "bbox_y2": 7.0, "class": float(label),
                            "fname": f"{i:05d}.jpg"})
    for i in range(1, 7):
        label = 1 if i % 2 else 2
        out[f"cars_test/{i:05d}.jpg"] = image(100 + i)
        test_annos.append({"bbox_x1": 1.0, "bbox_y1": 1.0, "bbox_x2": 7.0, "bbox_y2": 7.0, "class": float(label),
                           "fname": f"{i:05d}.jpg"})
    out["devkit/cars_meta.mat"] = mat_bytes({"class_names": [c.official for c in info.classes]})
    out["devkit/cars_train_annos.mat"] = mat_bytes({"annotations": train_annos})
    out["devkit/README.txt"] = b"devkit\n"
    out["cars_test_annos_withlabels.mat"] = mat_bytes({"annotations": test_annos}, compress=True)
    return out


def _stanford_cars() -> Upstream:
    info = get_dataset("stanford_cars")
    m = cars_members()
    pick = lambda prefix: {k: v for k, v in m.items() if k.startswith(prefix)}
    per_class: dict[int, list[str]] = {0: [], 1: []}
    for name in sorted(pick("cars_train/")):
        per_class[0 if int(name[-9:-4]) % 2 else 1].append(name)
    rows = coop_rows(per_class, lambda label: info.classes[label].name, n_train=4, n_val=1)
    rows["test"] = [[name, 0 if int(name[-9:-4]) % 2 else 1, info.classes[0 if int(name[-9:-4]) % 2 else 1].name]
                    for name in sorted(pick("cars_test/"))]
    files = {
        "cars_train.tgz": tar_bytes(pick("cars_train/")),
        "cars_test.tgz": tar_bytes(pick("cars_test/")),
        "car_devkit.tgz": tar_bytes(pick("devkit/")),
        "cars_test_annos_withlabels.mat": m["cars_test_annos_withlabels.mat"],
        "split_zhou_StanfordCars.json": coop_json(rows),
    }
    return Upstream(
        "stanford_cars", files, {"coop": counts(rows), "official": {"train+val": 10, "test": 6}}, 2,
        user_files=("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz", "cars_test_annos_withlabels.mat"),
    )


BUILDERS = {
    "dtd": _dtd, "food101": _food101, "oxford_pets": _oxford_pets, "sun397": _sun397, "eurosat": _eurosat,
    "fgvc_aircraft": _fgvc_aircraft, "imagenet": _imagenet, "oxford_flowers": _oxford_flowers,
    "stanford_cars": _stanford_cars, "caltech101": _caltech101, "cub": _cub,
}


@cache
def upstream(name: str) -> Upstream:
    return BUILDERS[name]()


# -- the server ---------------------------------------------------------------------------------


class Upstreams:
    """A ThreadingHTTPServer on 127.0.0.1 serving ``files[path]``.

    Routes: ``/files/<path>`` and ``/m/<path>`` (a mirror) serve bytes with Range support;
    ``/redirect/<rest>`` answers 302 to ``/<rest>``; ``/missing/...`` 404; ``/html/...`` an HTML
    page with text/html; ``/disguised/...`` an HTML page sent as application/octet-stream;
    ``/flaky/<rest>`` sends half of the file then drops the connection, the first time only.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.dropped: set[str] = set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                outer._serve(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add(self, name: str, up: Upstream) -> None:
        for filename, data in up.files.items():
            self.files[f"{name}/{filename}"] = data

    def requests_since(self, start: int) -> list[tuple[str, str | None, int]]:
        return self.log[start:]

    def _serve(self, handler):
        path = handler.path.split("?", 1)[0]
        byte_range = handler.headers.get("Range")
        route, _, rest = path.lstrip("/").partition("/")
        page = b"<!DOCTYPE html><html><head><title>Quota exceeded</title></head><body>Too many users</body></html>"
        headers: list[tuple[str, str]] = []
        kind, body, truncate = "application/octet-stream", b"", False
        if route == "redirect":
            status, headers = 302, [("Location", "/" + rest)]
        elif route == "html":
            status, body, kind = 200, page, "text/html; charset=utf-8"
        elif route == "disguised":
            status, body = 200, page
        elif route in ("files", "m", "flaky") and rest in self.files:
            data = self.files[rest]
            start = int(byte_range[len("bytes="):].split("-")[0]) if byte_range else 0
            if route == "flaky" and rest not in self.dropped:
                self.dropped.add(rest)
                status, body, truncate = 200, data, True
            elif byte_range and start >= len(data):
                status, headers = 416, [("Content-Range", f"bytes */{len(data)}")]
            elif byte_range:
                status, body = 206, data[start:]
                headers = [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")]
            else:
                status, body = 200, data
        else:
            status, body, kind = 404, b"not found", "text/plain"
        self.log.append((path, byte_range, status))  # before answering: the client may check at once
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            handler.send_header(k, v)
        handler.end_headers()
        if truncate:  # half the promised bytes, then the connection drops
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
        else:
            handler.wfile.write(body)


def write_registry(folder, entries: dict[str, dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in entries.items():
        (folder / f"{name}.json").write_text(json.dumps(entry, indent=1))


def entry_for(name: str, base: str, mutate=None) -> dict:
    entry = upstream(name).registry_entry(base)
    if mutate is not None:
        entry = copy.deepcopy(entry)
        mutate(entry)
    return entry
