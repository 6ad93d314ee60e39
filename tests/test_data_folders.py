"""Reading image folders: scanning, peer layouts, decoding and corrupt files."""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from synthshot.data.folders import (
    IMAGE_EXTENSIONS,
    check_images,
    detect_layout,
    load_rgb,
    resolve_image_root,
    scan_image_folder,
)
from synthshot.errors import DataError

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}


def write_image(path: Path, value: int = 128, size: int = 8, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, 255 - value, 64)).save(
        path, format=FORMATS[path.suffix.lower()]
    )
    return path


def jpeg_bytes(size: int = 64) -> bytes:
    buffer = BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_scan_sorts_classes_and_files(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        write_image(tmp_path / "zebra" / name)
    write_image(tmp_path / "apple" / "x.png")
    images = scan_image_folder(tmp_path)
    assert list(images) == ["apple", "zebra"]
    assert [p.name for p in images["zebra"]] == ["a.png", "b.png", "c.jpg"]
    assert images["apple"] == [tmp_path / "apple" / "x.png"]


def test_scan_filters_extensions_case_insensitively(tmp_path):
    for ext in IMAGE_EXTENSIONS:
        write_image(tmp_path / "cls" / f"img{ext}")
    write_image(tmp_path / "cls" / "UPPER.JPG")
    write_image(tmp_path / "cls" / "Mixed.PnG")
    (tmp_path / "cls" / "notes.txt").write_text("not an image")
    (tmp_path / "cls" / "labels.csv").write_text("a,b")
    (tmp_path / "cls" / "noext").write_bytes(b"x")
    (tmp_path / "cls" / "folder.png").mkdir()  # a folder with an image-like name is not an image
    names = [p.name for p in scan_image_folder(tmp_path)["cls"]]
    assert names == sorted(["Mixed.PnG", "UPPER.JPG"] + [f"img{ext}" for ext in IMAGE_EXTENSIONS])


def test_scan_ignores_hidden_files_and_folders(tmp_path):
    write_image(tmp_path / "cls" / "a.png")
    write_image(tmp_path / "cls" / ".hidden.png")
    write_image(tmp_path / "cls" / ".tmp-abc.png")
    write_image(tmp_path / ".cache" / "a.png")
    (tmp_path / "README.md").write_text("files at the root are not classes")
    images = scan_image_folder(tmp_path)
    assert list(images) == ["cls"]
    assert [p.name for p in images["cls"]] == ["a.png"]


def test_scan_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        scan_image_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_scan_root_is_a_file(tmp_path):
    file = write_image(tmp_path / "a.png")
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(file)


def test_scan_empty_root(tmp_path):
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(DataError, match="no class folders") as info:
        scan_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_scan_class_without_images_names_it(tmp_path):
    write_image(tmp_path / "good" / "a.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images") as info:
        scan_image_folder(tmp_path)
    assert str(tmp_path / "empty") in str(info.value)


def make_classes(folder: Path, classes=("cat", "dog"), count: int = 2) -> None:
    for name in classes:
        for i in range(count):
            write_image(folder / name / f"{i}.png")


def test_resolve_imagefolder(tmp_path):
    make_classes(tmp_path)
    assert detect_layout(tmp_path) == "imagefolder"
    assert resolve_image_root(tmp_path) == tmp_path
    assert resolve_image_root(tmp_path, layout="imagefolder", shots=4, seed=1) == tmp_path


def test_resolve_real_train_fewshot_layout(tmp_path):
    for seed in (0, 1, 2):
        make_classes(tmp_path / "real_train_fewshot" / f"seed{seed}")
    assert detect_layout(tmp_path) == "fewshot_seed"
    root = resolve_image_root(tmp_path, seed=1)
    assert root == tmp_path / "real_train_fewshot" / "seed1"
    assert list(scan_image_folder(root)) == ["cat", "dog"]
    assert resolve_image_root(tmp_path, layout="fewshot_seed", seed=2) == tmp_path / "real_train_fewshot" / "seed2"


def test_resolve_bare_seed_folders(tmp_path):
    make_classes(tmp_path / "seed3")
    assert resolve_image_root(tmp_path, seed=3) == tmp_path / "seed3"


def test_resolve_shot_seed_layout(tmp_path):
    make_classes(tmp_path / "shot4_seed1", count=4)
    make_classes(tmp_path / "shot16_seed1", count=16)
    assert detect_layout(tmp_path) == "shot_seed"
    assert resolve_image_root(tmp_path, shots=4, seed=1) == tmp_path / "shot4_seed1"
    assert resolve_image_root(tmp_path, layout="shot_seed", shots=16, seed=1) == tmp_path / "shot16_seed1"


def test_resolve_missing_seed_lists_available(tmp_path):
    for seed in (10, 2, 0):
        make_classes(tmp_path / "real_train_fewshot" / f"seed{seed}")
    with pytest.raises(DataError) as info:
        resolve_image_root(tmp_path, seed=5)
    message = str(info.value)
    assert "seed5" in message
    assert "seed0, seed2, seed10" in message  # numeric order


def test_resolve_missing_shot_lists_available(tmp_path):
    make_classes(tmp_path / "shot4_seed1")
    make_classes(tmp_path / "shot8_seed1")
    with pytest.raises(DataError) as info:
        resolve_image_root(tmp_path, shots=16, seed=1)
    assert "shot16_seed1" in str(info.value)
    assert "shot4_seed1, shot8_seed1" in str(info.value)


def test_resolve_seed_layout_needs_a_seed(tmp_path):
    make_classes(tmp_path / "real_train_fewshot" / "seed0")
    with pytest.raises(DataError, match="data.split_seed"):
        resolve_image_root(tmp_path)
    make_classes(tmp_path / "other" / "shot4_seed0")
    with pytest.raises(DataError, match="data.shots"):
        resolve_image_root(tmp_path / "other", seed=0)


def test_resolve_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="layout 'flat' is unknown"):
        resolve_image_root(tmp_path, layout="flat")


def test_load_rgb_converts_modes(tmp_path):
    gray = write_image(tmp_path / "g.png", value=7, mode="L")
    image = load_rgb(gray)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (7, 7, 7)


def test_load_rgb_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="not a readable image") as info:
        load_rgb(bad)
    assert str(bad) in str(info.value)
    assert "data.skip_corrupt=true" in str(info.value)


def test_load_rgb_truncated_jpeg_names_it(tmp_path):
    data = jpeg_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(cut) as image:  # the header is intact: only a full decode finds the damage
        assert image.size == (64, 64)
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_rgb(cut)
    assert str(cut) in str(info.value)
    assert "\n" not in str(info.value)


def test_check_images_raises_or_skips(tmp_path, caplog):
    good = [write_image(tmp_path / "cls" / f"{i}.png") for i in range(3)]
    bad = tmp_path / "cls" / "x.jpg"
    bad.write_bytes(b"\x00garbage" * 50)
    images = {"cls": [good[0], bad, good[1], good[2]]}
    with pytest.raises(DataError) as info:
        check_images(images, skip_corrupt=False)
    assert str(bad) in str(info.value)
    with caplog.at_level(logging.WARNING, logger="synthshot.data"):
        checked = check_images(images, skip_corrupt=True)
    assert checked == {"cls": good}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "synthshot.data"]
    assert len(warnings) == 1 and str(bad) in warnings[0].getMessage()


def test_check_images_class_with_only_corrupt_files(tmp_path):
    bad = tmp_path / "cls" / "x.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="'cls' has no readable image"):
        check_images({"cls": [bad]}, skip_corrupt=True)
