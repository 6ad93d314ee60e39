"""The drawn demo dataset: right layout, deterministic bytes, idempotent, never mixed with other data."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from synthshot.data.demo import SHAPES, make_demo_dataset
from synthshot.data.folders import scan_image_folder
from synthshot.errors import DataError


def read_all(images):
    return {f"{path.parent.name}/{path.name}": path.read_bytes() for files in images.values() for path in files}


def test_layout_and_counts(tmp_path):
    images = make_demo_dataset(tmp_path / "demo", classes=5, images_per_class=12, size=32)
    assert list(images) == list(SHAPES)[:5]
    assert all(len(files) == 12 for files in images.values())
    assert images["circle"][0] == tmp_path / "demo" / "circle" / "circle_00.png"
    assert scan_image_folder(tmp_path / "demo") == images  # same order as a scan
    with Image.open(images["star"][3]) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)


def test_images_show_two_colours_and_vary(tmp_path):
    images = make_demo_dataset(tmp_path, classes=2, images_per_class=4)
    arrays = [np.asarray(Image.open(p)) for files in images.values() for p in files]
    for array in arrays:
        assert len(np.unique(array.reshape(-1, 3), axis=0)) >= 2  # a shape on a background
    assert len({a.tobytes() for a in arrays}) == len(arrays)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = read_all(make_demo_dataset(tmp_path / "a", seed=3))
    again = read_all(make_demo_dataset(tmp_path / "b", seed=3))
    other = read_all(make_demo_dataset(tmp_path / "c", seed=4))
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_class_images_do_not_depend_on_class_count(tmp_path):
    few = read_all(make_demo_dataset(tmp_path / "few", classes=2))
    many = read_all(make_demo_dataset(tmp_path / "many", classes=8))
    assert all(many[name] == data for name, data in few.items())


def test_idempotent(tmp_path):
    root = tmp_path / "demo"
    images = make_demo_dataset(root)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for files in images.values() for p in files}
    os.utime(images["circle"][0], ns=(1, 1))  # a rewrite would reset this
    assert make_demo_dataset(root) == images
    assert images["circle"][0].stat().st_mtime_ns == 1
    assert {p: p.read_bytes() for p in before} == {p: data for p, (_, data) in before.items()}


def test_redraws_on_other_settings_or_missing_files(tmp_path):
    root = tmp_path / "demo"
    images = make_demo_dataset(root, seed=0)
    old = images["square"][1].read_bytes()
    make_demo_dataset(root, seed=1)  # same file names, other seed: drawn again
    assert images["square"][1].read_bytes() != old
    images["square"][1].unlink()  # as if a run was killed part-way
    make_demo_dataset(root, seed=0)
    assert images["square"][1].read_bytes() == old


def test_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not this demo dataset") as info:
        make_demo_dataset(tmp_path)
    assert "photo.jpg" in str(info.value) or "mine" in str(info.value)
    assert not (tmp_path / "circle").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 1}, "classes=1"),
        ({"classes": 9}, "classes=9"),
        ({"images_per_class": 0}, "images_per_class"),
        ({"size": 8}, "size=8"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        make_demo_dataset(tmp_path, **kwargs)
