"""`synthshot datasets prepare` end to end for every benchmark, against a real HTTP server on
loopback serving tiny archives built in each dataset's real internal layout (offline, fast)."""

from __future__ import annotations

import json
import os

import pytest
from datasets_upstream import BUILDERS, Upstreams, entry_for, upstream, write_registry

from synthshot.data.coop import load_coop_split
from synthshot.data.registry import get_dataset
from synthshot.datasets.download import HttpOptions
from synthshot.datasets.prepare import (
    dataset_folder,
    dataset_split_file,
    prepare_dataset,
)
from synthshot.datasets.verify import verify_dataset

FAST = HttpOptions(timeout=10, retries=2, backoff=0.01, progress=False, offline=False)  # conftest sets HF_HUB_OFFLINE; this is loopback

# What the peers' code (CoOp, Tip-Adapter, DataDream, Cub2011 loaders) reads, per dataset folder.
PEER_LAYOUT = {
    "dtd": ["images/banded/banded_0001.jpg", "labels/train1.txt", "imdb/imdb.mat", "split_zhou_DescribableTextures.json"],
    "food101": ["images/apple_pie/1001.jpg", "meta/train.txt", "meta/classes.txt", "license_agreement.txt",
                "README.txt", "split_zhou_Food101.json"],
    "oxford_pets": ["images/Abyssinian_1.jpg", "annotations/trainval.txt", "annotations/test.txt",
                    "split_zhou_OxfordPets.json"],
    "sun397": ["SUN397/a/abbey/sun_a0001.jpg", "SUN397/a/apartment_building/outdoor", "SUN397/ClassName.txt",
               "split_zhou_SUN397.json", "Training_01.txt", "Testing_01.txt"],
    "eurosat": ["2750/AnnualCrop/AnnualCrop_1.jpg", "2750/HerbaceousVegetation/HerbaceousVegetation_5.jpg", "split_zhou_EuroSAT.json"],
    "fgvc_aircraft": ["images/1000001.jpg", "variants.txt", "images_variant_train.txt", "images_variant_test.txt"],
    "imagenet": ["images/train/n01440764/n01440764_100.JPEG", "images/val/n01440764/ILSVRC2012_val_00000001.JPEG",
                 "images/val/n01443537/ILSVRC2012_val_00000002.JPEG", "classnames.txt"],
    "oxford_flowers": ["jpg/image_00001.jpg", "imagelabels.mat", "setid.mat", "cat_to_name.json",
                       "split_zhou_OxfordFlowers.json"],
    "stanford_cars": ["cars_train/00001.jpg", "cars_test/00001.jpg", "devkit/cars_meta.mat",
                      "cars_test_annos_withlabels.mat", "split_zhou_StanfordCars.json"],
    "caltech101": ["101_ObjectCategories/Faces/image_0001.jpg", "101_ObjectCategories/accordion/image_0005.jpg",
                   "split_zhou_Caltech101.json"],
    "cub": ["images/001.Black_footed_Albatross", "images.txt", "image_class_labels.txt", "train_test_split.txt",
            "classes.txt"],
}
NOT_KEPT = {"fgvc_aircraft": ["evaluation.m", "README.md"], "cub": ["attributes.txt"],
            "caltech101": ["Annotations.tar", "show_annotation.m", "__MACOSX"]}


@pytest.fixture(scope="module")
def server():
    upstreams = Upstreams()
    for name in BUILDERS:
        upstreams.add(name, upstream(name))
    yield upstreams
    upstreams.close()


def setup_dataset(tmp_path, server, name, mutate=None):
    """A registry override pointing at the server, and the user's own files for manual datasets."""
    registry = tmp_path / "registry"
    write_registry(registry, {name: entry_for(name, server.base, mutate)})
    user = []
    for filename in upstream(name).user_files:
        path = tmp_path / "downloads" / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(upstream(name).files[filename])
        user.append(path)
    return registry, user


def tree_state(folder):
    state = {}
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            state[os.path.relpath(os.path.join(dirpath, f), folder)] = (st.st_mtime_ns, st.st_size)
    return state


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_prepare_every_dataset(tmp_path, server, name):
    up = upstream(name)
    info = get_dataset(name)
    registry, user = setup_dataset(tmp_path, server, name)
    root = tmp_path / "data"
    messages: list[str] = []
    folder = dataset_folder(root, name, registry)

    for protocol, expected in up.counts.items():
        result = prepare_dataset(name, root, protocol=protocol, from_archives=user, registry_dir=registry,
                                 http=FAST, echo=messages.append)
        assert result.folder == folder and result.protocol == protocol
        got = dict(result.counts, **{"train+val": result.counts["train"] + result.counts["val"]})
        assert {k: got[k] for k in expected} == expected

        # the contract with the data layer: CoOp triples, paths relative to the dataset folder
        split_file = dataset_split_file(root, name, protocol, registry)
        assert split_file == result.split_file == folder / "synthshot" / f"split_{protocol}.json"
        split = load_coop_split(split_file, image_root=folder)
        assert split.missing_files() == []
        for entries in split.splits.values():
            for entry in entries:
                assert entry.classname == info.classes[entry.label].name
        assert len(split.by_class("train")) == up.classes

    # the peers' layout, with the CoOp split file byte-identical to the published one
    for rel in PEER_LAYOUT[name]:
        assert (folder / rel).exists(), rel
    for rel in NOT_KEPT.get(name, []):
        assert not (folder / rel).exists(), rel
    for filename, data in up.files.items():
        if filename.startswith("split_zhou_"):
            assert (folder / filename).read_bytes() == data

    classnames = json.loads((folder / "synthshot" / "classnames.json").read_text())
    assert len(classnames) == info.num_classes
    assert classnames[0] == {"label": 0, "name": info.classes[0].name, "folder": info.classes[0].official}
    templates = json.loads((folder / "synthshot" / "templates.json").read_text())
    assert templates["template"] == info.template
    assert templates["zeroshot_templates"] == list(info.zeroshot_templates)
    manifest = json.loads((folder / "synthshot" / "manifest.json").read_text())
    assert set(manifest["protocols"]) == set(up.counts)
    assert {r["verified"] for r in manifest["files"].values()} == {"sha256"}
    assert set(manifest["files"]) == set(up.files)
    assert manifest["terms"]["url"].startswith("https://") and manifest["licence_note"]
    assert not list(root.glob(".*.staging")) and not list(root.glob(".*.adding"))

    # running prepare again makes no request and rewrites nothing
    before, requests = tree_state(root), len(server.log)
    for protocol in up.counts:
        again = prepare_dataset(name, root, protocol=protocol, from_archives=user, registry_dir=registry,
                                http=FAST, echo=messages.append)
        assert again.status == "already prepared"
    assert server.log[requests:] == []
    assert tree_state(root) == before

    report = verify_dataset(name, root, registry_dir=registry, echo=messages.append)
    assert report.ok, report.problems
    assert set(report.counts) == set(up.counts)


def test_imagefolder_keeps_the_split_label_order(tmp_path, server):
    registry, _ = setup_dataset(tmp_path, server, "sun397")
    root = tmp_path / "data"
    result = prepare_dataset("sun397", root, imagefolder="copy", registry_dir=registry, http=FAST, echo=lambda *a: None)
    split = load_coop_split(result.split_file, image_root=result.folder)
    for name, entries in split.splits.items():
        view = result.imagefolder / name
        folders = sorted(os.listdir(view))
        # sorted folder names (ImageFolder's order) follow the labels: "000_abbey" ... "008_outdoor_..."
        assert [int(f.split("_")[0]) for f in folders] == sorted({e.label for e in entries})
        for folder in folders:
            label = int(folder.split("_")[0])
            files = sorted(os.listdir(view / folder))
            assert files == sorted(e.path.name for e in entries if e.label == label)
            assert (view / folder / files[0]).read_bytes() == (
                next(e.path for e in entries if e.label == label and e.path.name == files[0]).read_bytes()
            )

    # asking for another view later needs no network
    requests = len(server.log)
    again = prepare_dataset("sun397", root, imagefolder="symlink", registry_dir=registry, http=FAST,
                            echo=lambda *a: None)
    assert again.status == "imagefolder added" and server.log[requests:] == []
    link = next((again.imagefolder / "train").rglob("*.jpg"))
    assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.read_bytes()
