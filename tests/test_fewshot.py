"""Few-shot splits: nested, reproducible, robust to bad files and odd class names; saved and loaded."""

from __future__ import annotations

import json
import logging
import os
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthshot.data import fewshot
from synthshot.data.fewshot import (
    load_split,
    make_fewshot_split,
    save_split,
    shuffled_files,
    split_path,
    summarize_split,
)
from synthshot.data.folders import scan_image_folder
from synthshot.errors import DataError
from synthshot.io import safe_join, slugify


def write_class(folder: Path, count: int, ext: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:02d}{ext}"
        Image.new("RGB", (8, 8), (i * 10 % 256, 0, 0)).save(path, format="PNG" if ext == ".png" else "JPEG")
        paths.append(path)
    return paths


@pytest.fixture
def dataset(tmp_path) -> dict[str, list[Path]]:
    for name in ("cat", "dog", "owl"):
        write_class(tmp_path / name, 16)
    return scan_image_folder(tmp_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_are_nested(dataset, seed):
    splits = {k: make_fewshot_split(dataset, k, seed) for k in (1, 2, 4, 8, 16)}
    for k in (1, 2, 4, 8):
        for name in dataset:
            assert len(splits[k][name]) == k
            assert splits[k][name] == splits[2 * k][name][:k]
    assert all(sorted(files) == dataset[name] for name, files in splits[16].items())


def test_split_is_deterministic_and_ignores_input_order(dataset):
    first = make_fewshot_split(dataset, 4, seed=1)
    assert make_fewshot_split(dataset, 4, seed=1) == first
    shuffled = {name: list(reversed(files)) for name, files in reversed(list(dataset.items()))}
    assert make_fewshot_split(shuffled, 4, seed=1) == first


def test_split_of_a_class_does_not_depend_on_other_classes(dataset):
    alone = make_fewshot_split({"cat": dataset["cat"]}, 4, seed=0)
    together = make_fewshot_split(dataset, 4, seed=0)
    assert alone["cat"] == together["cat"]


def test_different_seeds_differ(dataset):
    picks = [make_fewshot_split(dataset, 8, seed)["cat"] for seed in (0, 1, 2)]
    assert picks[0] != picks[1] and picks[1] != picks[2] and picks[0] != picks[2]


def test_order_is_fixed_across_runs_and_machines():
    # Golden order: changes only if the seeding scheme does (which would change every published split).
    files = [Path(f"{i:02d}.png") for i in range(16)]
    order = [p.stem for p in shuffled_files(files, 0, "cat")]
    assert order == ["07", "13", "10", "14", "01", "02", "15", "05", "08", "12", "00", "06", "03", "04", "11", "09"]


def test_fewer_images_than_shots(tmp_path, caplog):
    images = {"plenty": write_class(tmp_path / "plenty", 6), "rare": write_class(tmp_path / "rare", 3)}
    with pytest.raises(DataError) as info:
        make_fewshot_split(images, 4, seed=0)
    assert "'rare' has 3 images" in str(info.value)
    assert "data.allow_fewer=true" in str(info.value)
    with caplog.at_level(logging.INFO, logger="synthshot.data"):
        split = make_fewshot_split(images, 4, seed=0, allow_fewer=True)
    assert len(split["plenty"]) == 4
    assert sorted(split["rare"]) == images["rare"]
    assert any("rare" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("shots", [0, -1, 2.5, True])
def test_shots_must_be_a_positive_int(dataset, shots):
    with pytest.raises(DataError, match="data.shots"):
        make_fewshot_split(dataset, shots, seed=0)


def _damage_random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())


def _damage_truncate(path: Path) -> None:
    buffer = BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_damage_random, _damage_truncate], ids=["random_bytes", "truncated"])
def test_corrupt_file_raises_or_is_replaced(tmp_path, caplog, damage):
    files = write_class(tmp_path / "cat", 16, ext=".jpg")
    order = shuffled_files(files, 0, "cat")
    bad = order[1]  # the second pick: inside every split of 2 shots or more
    damage(bad)
    images = {"cat": files}

    with pytest.raises(DataError, match="not a readable image") as info:
        make_fewshot_split(images, 4, seed=0)
    assert str(bad) in str(info.value)

    with caplog.at_level(logging.WARNING, logger="synthshot.data"):
        split = make_fewshot_split(images, 4, seed=0, skip_corrupt=True)
    assert len(split["cat"]) == 4 and bad not in split["cat"]
    assert split["cat"] == [order[0], order[2], order[3], order[4]]
    assert any(str(bad) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    splits = {k: make_fewshot_split(images, k, 0, skip_corrupt=True)["cat"] for k in (1, 2, 4, 8)}
    for k in (1, 2, 4):
        assert splits[k] == splits[2 * k][:k]
    # A bad file outside the chosen ones is never decoded, hence never reported.
    assert make_fewshot_split(images, 1, seed=0) == {"cat": [order[0]]}
    assert bad in make_fewshot_split(images, 4, seed=0, verify=False)["cat"]


def test_too_few_readable_images(tmp_path):
    files = write_class(tmp_path / "cat", 3)
    files[0].write_bytes(b"broken")
    with pytest.raises(DataError, match="'cat' has 2 readable images of 3"):
        make_fewshot_split({"cat": files}, 3, seed=0, skip_corrupt=True)
    split = make_fewshot_split({"cat": files}, 3, seed=0, skip_corrupt=True, allow_fewer=True)
    assert sorted(split["cat"]) == files[1:]


@pytest.mark.parametrize("names", [("Cat", "cat"), ("a b", "a_b")])
def test_classes_clashing_after_slugify(tmp_path, names):
    images = {name: write_class(tmp_path / f"c{i}", 2) for i, name in enumerate(names)}
    with pytest.raises(DataError) as info:
        make_fewshot_split(images, 1, seed=0)
    assert repr(names[0]) in str(info.value) and repr(names[1]) in str(info.value)


def test_unsafe_class_names_stay_inside(tmp_path):
    names = ["../evil", "a/b", "back\\slash", "..", "tab\tand\nnewline", "/abs/olute", "ok"]
    files = write_class(tmp_path / "imgs", 2)
    split = make_fewshot_split({name: files for name in names}, 1, seed=0)
    assert list(split) == names
    out = tmp_path / "out"
    for name in names:
        target = safe_join(out, slugify(name))
        assert target.parent == out.resolve()
    saved = split_path(tmp_path, "weird", 1, 0)
    save_split(saved, split)
    assert load_split(saved) == split


def test_save_load_round_trip(dataset, tmp_path):
    split = make_fewshot_split(dataset, 4, seed=3)
    path = split_path(tmp_path / "run", "My Data", 4, 3)
    assert path == tmp_path / "run" / "splits" / "my_data_shot4_seed3.json"
    save_split(path, split)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert list(raw) == list(split)
    assert raw["cat"] == [p.as_posix() for p in split["cat"]]  # selection order kept
    assert all(Path(p).is_absolute() for files in raw.values() for p in files)
    assert load_split(path) == split
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_save_split_writes_absolute_paths(tmp_path, monkeypatch):
    files = write_class(tmp_path / "cat", 2)
    monkeypatch.chdir(tmp_path)
    save_split(tmp_path / "s.json", {"cat": [Path("cat") / f.name for f in files]})
    assert json.loads((tmp_path / "s.json").read_text())["cat"] == [f.as_posix() for f in files]


def test_load_resolves_relative_paths_against_the_file(tmp_path, monkeypatch):
    files = write_class(tmp_path / "data" / "cat", 2)
    path = tmp_path / "splits" / "hand.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"cat": ["../data/cat/00.png", str(files[1])]}))
    monkeypatch.chdir(tmp_path / "data")  # the working directory must not matter
    assert load_split(path) == {"cat": files}


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        load_split(tmp_path / "none.json")
    assert "none.json" in str(info.value)


def test_load_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_split(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (["a.png"], "non-empty JSON object"),
        ({}, "non-empty JSON object"),
        ({"cat": "a.png"}, "'cat' must map to a non-empty list"),
        ({"cat": []}, "'cat' must map to a non-empty list"),
        ({"cat": ["a.png", 3]}, "'cat' lists an entry that is not a path"),
        ({"cat": ["a.png", "a.png"]}, "'cat' lists the same image twice"),
        ({" ": ["a.png"]}, "empty class name"),
    ],
)
def test_load_wrong_structure(tmp_path, content, message):
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message) as info:
        load_split(path)
    assert str(path) in str(info.value)


def test_load_missing_listed_files(tmp_path):
    real = write_class(tmp_path / "cat", 1)
    missing = [f"gone{i}.png" for i in range(5)]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"cat": [str(real[0]), *missing]}))
    with pytest.raises(DataError) as info:
        load_split(path)
    message = str(info.value)
    assert "5 missing" in message and "gone0.png" in message and "gone2.png" in message
    assert "gone4.png" not in message and "and 2 more" in message


def _saved_with_root(run: Path, shots: int = 2) -> tuple[Path, Path, dict[str, list[Path]]]:
    """A run folder holding its data (run/data/<class>/...) and a split saved relative to it."""
    data = run / "data"
    for name in ("cat", "dog"):
        write_class(data / name, 4)
    split = make_fewshot_split(scan_image_folder(data), shots, seed=0)
    path = split_path(run, "data", shots, 0)
    fewshot.save_split(path, split, root=data)
    return path, data, split


def test_save_split_with_root_stores_relative_paths_and_the_root(tmp_path):
    path, data, split = _saved_with_root(tmp_path / "run")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["format"] == "synthshot-split-2"
    assert raw["root"] == data.as_posix() and Path(raw["root"]).is_absolute()
    assert list(raw["classes"]) == list(split)
    for name, files in split.items():
        assert raw["classes"][name] == [p.relative_to(data).as_posix() for p in files]  # selection order kept
    assert not any(Path(p).is_absolute() for files in raw["classes"].values() for p in files)
    assert fewshot.split_root(path) == data
    assert load_split(path) == split
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically, no temporary left


def test_save_split_with_relative_root_and_a_file_outside_it(tmp_path, monkeypatch):
    inside = write_class(tmp_path / "data" / "cat", 2)
    outside = write_class(tmp_path / "elsewhere" / "cat", 1)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.json"
    fewshot.save_split(path, {"cat": [Path("data/cat/01.png"), outside[0], inside[0]]}, root=Path("data"))
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["root"] == (tmp_path / "data").as_posix()  # absolute at save time
    assert raw["classes"]["cat"] == ["cat/01.png", outside[0].as_posix(), "cat/00.png"]
    monkeypatch.chdir(outside[0].parent)  # the working directory must not matter when loading
    assert load_split(path) == {"cat": [inside[1], outside[0], inside[0]]}


def test_copied_run_loads_from_the_copy(tmp_path):
    # `cp -a run copy` of a run whose data lives inside it: the copy's split must point into the copy.
    path, data, split = _saved_with_root(tmp_path / "run")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy, symlinks=True)
    new_data = copy / "data"
    loaded = load_split(copy / path.relative_to(tmp_path / "run"), root=new_data)
    assert loaded == {name: [new_data / p.relative_to(data) for p in files] for name, files in split.items()}
    assert all(p.is_relative_to(new_data) and p.is_file() for files in loaded.values() for p in files)
    shutil.rmtree(tmp_path / "run")  # the copy does not depend on the original
    assert load_split(copy / path.relative_to(tmp_path / "run"), root=str(new_data)) == loaded


def test_moved_data_without_the_files_names_both_roots(tmp_path):
    path, data, _ = _saved_with_root(tmp_path / "run")
    looked = tmp_path / "empty"
    looked.mkdir()
    with pytest.raises(DataError) as info:
        load_split(path, root=looked)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and str(data) in message and str(looked) in message
    assert "data.root" in message and "make the split again" in message


def test_moved_data_loaded_from_the_recorded_root(tmp_path):
    path, data, split = _saved_with_root(tmp_path / "run")
    data.rename(tmp_path / "moved")
    with pytest.raises(DataError, match="lists 4 missing image") as info:
        load_split(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    moved = load_split(path, root=tmp_path / "moved")
    assert moved == {name: [tmp_path / "moved" / p.relative_to(data) for p in files] for name, files in split.items()}


def test_old_format_still_loads(tmp_path):
    files = write_class(tmp_path / "data" / "cat", 2)
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"cat": [files[1].as_posix(), files[0].as_posix()]}))
    assert fewshot.split_root(path) is None
    assert load_split(path) == {"cat": [files[1], files[0]]}
    # The root argument does not move an old split's absolute paths.
    assert load_split(path, root=tmp_path / "elsewhere") == {"cat": [files[1], files[0]]}
    fewshot.save_split(tmp_path / "again.json", {"cat": files})  # without a root: the old format
    assert json.loads((tmp_path / "again.json").read_text()) == {"cat": [f.as_posix() for f in files]}


@pytest.mark.parametrize(
    "content, message",
    [
        ({"format": "synthshot-split-9", "root": "/d", "classes": {"cat": ["a.png"]}}, "unknown format"),
        ({"format": "synthshot-split-2", "classes": {"cat": ["a.png"]}}, "'root' must be an absolute path"),
        ({"format": "synthshot-split-2", "root": "rel", "classes": {"cat": ["a.png"]}}, "'root' must be an absolute"),
        ({"format": "synthshot-split-2", "root": 3, "classes": {"cat": ["a.png"]}}, "'root' must be an absolute"),
        ({"format": "synthshot-split-2", "root": "/d"}, "'classes' must hold a non-empty JSON object"),
        ({"format": "synthshot-split-2", "root": "/d", "classes": []}, "'classes' must hold a non-empty"),
        ({"format": "synthshot-split-2", "root": "/d", "classes": {"cat": []}}, "'cat' must map to a non-empty"),
        ({"format": "synthshot-split-2", "root": "/d", "classes": {"cat": ["a", "a"]}}, "same image twice"),
        ({"format": "synthshot-split-2", "root": "/d", "classes": {"c": ["a"]}, "x": 1}, "unexpected key 'x'"),
    ],
)
def test_load_wrong_structure_new_format(tmp_path, content, message):
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message) as info:
        load_split(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_summary_table(dataset):
    split = make_fewshot_split(dataset, 4, seed=0)
    text = summarize_split(split, {name: len(files) for name, files in dataset.items()})
    lines = text.splitlines()
    for name in ("cat", "dog", "owl"):
        assert any(line.split()[:3] == [name, "16", "4"] for line in lines)
    assert lines[-1].split()[-2:] == ["48", "12"]
    assert "3 classes" in lines[-1]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    bare = summarize_split({"odd\tname": split["cat"]})
    assert "odd\\tname" in bare and "\t" not in bare
    assert bare.splitlines()[-1].split()[-2:] == ["-", "4"]


def test_split_path_slugs_the_dataset_name(tmp_path):
    assert split_path(tmp_path, "../x", 2, 0).parent == tmp_path / "splits"
    assert os.sep not in split_path(tmp_path, "a/b", 1, 1).name
