"""tests/prepared_datasets.py: for each benchmark, a small dataset that `synthshot datasets prepare`
itself laid out, in the folder the presets name, readable by `data.layout: coop` and by the
`{source: coop, split: val|test}` evaluation sources, and accepted by `synthshot datasets verify`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prepared_datasets import (
    BUILDERS,
    DATASETS,
    PRESET_DATA_ROOTS,
    builtin_source,
    make_prepared_dataset,
    prepare_root,
    preset_data,
    presets_of,
    registry_dir,
    split_sizes,
    verify_prepared,
)
from typer.testing import CliRunner

from synthshot.experiment import Experiment
from synthshot.config import load_config
from synthshot.data.coop import load_coop_split
from synthshot.data.registry import get_dataset
from synthshot.datasets.prepare import dataset_folder, dataset_split_file
from synthshot.datasets.registry import dataset_names

K, TRAIN, VAL, TEST, SIZE = 3, 4, 2, 2, 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every benchmark under one root (as a user's data/ folder): name -> (root, folder, seconds)."""
    root = tmp_path_factory.mktemp("work")
    out = {}
    for name in DATASETS:
        start = time.perf_counter()
        folder = make_prepared_dataset(name, root, classes=K, train=TRAIN, val=VAL, test=TEST, size=SIZE, seed=0)
        out[name] = (root, folder, time.perf_counter() - start)
    return out


def test_every_registry_dataset_and_preset_is_covered():
    assert sorted(BUILDERS) == dataset_names() == sorted(DATASETS)
    assert len(DATASETS) == 11
    for name in DATASETS:
        assert presets_of(name), f"no preset names {name}"
    for preset, data in preset_data().items():
        assert data["layout"] == "coop", preset
        assert data["dataset"] in BUILDERS, preset
        assert not PRESET_DATA_ROOTS[preset].is_absolute()


@pytest.mark.parametrize("name", DATASETS)
def test_prepared_dataset(prepared, name, tmp_path):
    root, folder, seconds = prepared[name]
    assert seconds < 2, f"{name} took {seconds:.2f}s"
    info = get_dataset(name)
    source = builtin_source(name)
    protocol = source.default_protocol
    names = [c.name for c in info.classes[:K]]
    expected = split_sizes(name, classes=K, train=TRAIN, val=VAL, test=TEST)

    # the folder the presets point data.root at, which is where prepare puts the dataset
    for preset in presets_of(name):
        assert folder == root / PRESET_DATA_ROOTS[preset], preset
    assert folder == dataset_folder(prepare_root(root, name), name) == prepare_root(root, name) / source.dir

    # verify (offline) accepts it, with the registry entry prepare ran with; the CLI too
    report = verify_prepared(name, root, decode=True)
    assert report.ok, report.problems
    assert report.counts == {protocol: expected}
    from synthshot.cli import app

    result = CliRunner().invoke(app, ["datasets", "verify", name, "--root", str(prepare_root(root, name)),
                                      "--registry", str(registry_dir(root)), "--decode"])
    assert result.exit_code == 0, result.output
    assert f"{name} ({protocol}): ok" in result.output

    # the synthshot/ files prepare writes
    split_file = dataset_split_file(prepare_root(root, name), name, registry_dir=registry_dir(root))
    assert split_file == folder / "synthshot" / f"split_{protocol}.json"
    meta = folder / "synthshot"
    classnames = json.loads((meta / "classnames.json").read_text())
    assert classnames == [{"label": c.label, "name": c.name, "folder": c.official} for c in info.classes]
    templates = json.loads((meta / "templates.json").read_text())
    assert templates["dataset"] == name and templates["template"] == info.template
    manifest = json.loads((meta / "manifest.json").read_text())
    assert manifest["dataset"] == name and manifest["folder"] == source.dir
    record = manifest["protocols"][protocol]
    assert record["split_file"] == f"synthshot/split_{protocol}.json"
    assert record["counts"] == expected and record["classes"] == K

    # the coop split: K classes with the registry's names and labels, every image on disk
    split = load_coop_split(split_file, image_root=folder)
    assert split.classnames == names
    for part in ("train", "val", "test"):
        entries = split.entries(part)
        assert len(entries) == expected[part]
        assert sorted({e.label for e in entries}) == list(range(K))
        assert all(e.classname == names[e.label] for e in entries)
        assert all(e.path.is_file() and folder in e.path.parents for e in entries)
    assert split.missing_files() == []
    assert not {e.path for e in split.entries("train")} & {e.path for e in split.entries("test")}

    # small drawn images, one look per class
    means = []
    for label, files in enumerate(split.by_class("train").values()):
        with Image.open(files[0]) as image:
            assert image.size == (SIZE, SIZE) and image.format == "JPEG"
            means.append(np.asarray(image.convert("RGB"), dtype=float).mean(axis=(0, 1)))
    assert min(np.abs(a - b).sum() for i, a in enumerate(means) for b in means[i + 1:]) > 20

    # through the presets: data.layout coop reads the split prepare wrote under data.root; the
    # {source: coop, split: val|test} evaluation sources read it with data.root as image root
    for preset in presets_of(name):
        config = load_config(preset, [f"data.root={folder}", f"output_dir={tmp_path / preset}", "data.shots=1"])
        exp = Experiment(config)
        assert config.data.layout == "coop" and config.data.split_file is None
        assert exp.coop_split_file == split_file == default_split_file(folder)
        assert list(exp.labelled_pool) == names
        sets = exp.finetune_sets if preset.startswith("dipsy") else exp.classifier_sets
        assert len(sets.test) == expected["test"] and sorted(set(sets.test.labels)) == list(range(K))
        if name == "imagenet":  # its val list is its test list: the presets choose nothing on it
            assert sets.val is None
        else:
            assert len(sets.val) == expected["val"] and all(f.is_file() for f in sets.val.files)


def default_split_file(data_root: Path) -> Path:
    """The split a `data.layout: coop` run reads when data.split_file is unset: the CoOp protocol's,
    else the official one (as synthshot's run code picks it; CUB has only the official split)."""
    for name in ("split_coop.json", "split_official.json"):
        if (Path(data_root) / "synthshot" / name).is_file():
            return Path(data_root) / "synthshot" / name
    raise AssertionError(f"no split file under {data_root}/synthshot")


@pytest.mark.parametrize("name", DATASETS)
def test_preset_val_and_test_are_disjoint(prepared, name):
    _, folder, _ = prepared[name]
    split = load_coop_split(default_split_file(folder), image_root=folder)
    shared = {e.path for e in split.entries("val")} & {e.path for e in split.entries("test")}
    # ImageNet's CoOp val list is its test list (prepare keeps it so); its presets set no val source.
    assert bool(shared) == (name == "imagenet")


def test_total_time(prepared):
    assert sum(seconds for _, _, seconds in prepared.values()) < 10


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("food101", dict(classes=5, train=1, val=0, test=3)),
        ("oxford_pets", dict(classes=7, train=2, val=1, test=1)),  # cat and dog breeds
        ("sun397", dict(classes=9, train=1, val=1, test=1)),  # label 8: a three-part folder
        ("imagenet", dict(classes=2, train=3, val=1, test=3)),  # val = test: max(val, test) images
        ("cub", dict(classes=2, train=1, val=0, test=1)),
        ("cub", dict(classes=2, train=4, val=2, test=1)),
        ("stanford_cars", dict(classes=4, train=2, val=2, test=2, size=48)),
    ],
)
def test_other_sizes(tmp_path, name, kwargs):
    folder = make_prepared_dataset(name, tmp_path, **kwargs)
    sizes = {k: v for k, v in kwargs.items() if k in ("classes", "train", "val", "test")}
    expected = split_sizes(name, **sizes)
    split = load_coop_split(dataset_split_file(prepare_root(tmp_path, name), name, registry_dir=registry_dir(tmp_path)),
                            image_root=folder)
    assert {p: len(split.entries(p)) for p in expected} == expected
    assert split.classnames == [c.name for c in get_dataset(name).classes[: kwargs["classes"]]]
    assert expected["train"] >= kwargs["classes"] * kwargs["train"]
    assert expected["val"] >= kwargs["classes"] * kwargs["val"]
    assert expected["test"] >= kwargs["classes"] * kwargs["test"]
    assert verify_prepared(name, tmp_path).ok
    with Image.open(split.entries("test")[0].path) as image:
        assert image.size == (kwargs.get("size", 32),) * 2


def test_deterministic_from_the_seed(tmp_path):
    a = make_prepared_dataset("dtd", tmp_path / "a", seed=1)
    b = make_prepared_dataset("dtd", tmp_path / "b", seed=1)
    c = make_prepared_dataset("dtd", tmp_path / "c", seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files == sorted(p.relative_to(c) for p in c.rglob("*.jpg")) and files
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    assert (a / "synthshot" / "split_coop.json").read_bytes() == (c / "synthshot" / "split_coop.json").read_bytes()


def test_refuses_an_existing_folder(tmp_path):
    make_prepared_dataset("eurosat", tmp_path)
    with pytest.raises(FileExistsError):
        make_prepared_dataset("eurosat", tmp_path)
