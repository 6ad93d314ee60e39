"""Split checks (missing paths listed, labels out of range, a label with two names, names that
differ from the registry), manual datasets (exit code 2, re-packaged Stanford Cars copies),
`verify`, the MAT-file reader and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest
from datasets_upstream import (
    Upstreams,
    cars_members,
    entry_for,
    upstream,
    write_registry,
    zip_bytes,
)

from synthshot.data.coop import load_coop_split
from synthshot.datasets.download import HttpOptions
from synthshot.datasets.layouts import carve_val
from synthshot.datasets.mat import read_mat, write_mat
from synthshot.datasets.prepare import ManualDownloadRequired, prepare_dataset
from synthshot.datasets.verify import verify_dataset
from synthshot.errors import DataError

FAST = HttpOptions(timeout=10, retries=1, backoff=0.01, progress=False, offline=False)  # conftest sets HF_HUB_OFFLINE; this is loopback
DTD_SPLIT = "split_zhou_DescribableTextures.json"


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def server():
    upstreams = Upstreams()
    for name in ("dtd", "stanford_cars"):
        upstreams.add(name, upstream(name))
    yield upstreams
    upstreams.close()


def dtd_with_split(tmp_path, server, edit) -> object:
    """A DTD registry whose CoOp split file is the tiny one after ``edit(rows)``."""
    rows = json.loads(upstream("dtd").files[DTD_SPLIT])
    edit(rows)
    data = json.dumps(rows).encode()
    key = f"custom/{hashlib.sha256(data).hexdigest()[:12]}/{DTD_SPLIT}"
    server.files[key] = data

    def mutate(entry):
        spec = entry["files"][1]
        spec.update(urls=[f"{server.base}/files/{key}"], size=len(data), md5=hashlib.md5(data).hexdigest(),
                    sha256=hashlib.sha256(data).hexdigest())

    registry = tmp_path / "registry"
    write_registry(registry, {"dtd": entry_for("dtd", server.base, mutate)})
    return registry


def test_split_paths_missing_on_disk_are_listed(tmp_path, server):
    def edit(rows):
        rows["test"].append(["banded/banded_0099.jpg", 0, "banded"])
        rows["test"].append(["braided/braided_0042.jpg", 2, "braided"])

    registry = dtd_with_split(tmp_path, server, edit)
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        prepare_dataset("dtd", root, registry_dir=registry, http=FAST, echo=quiet)
    message = str(err.value)
    assert "2 image(s)" in message
    assert "images/banded/banded_0099.jpg" in message and "images/braided/braided_0042.jpg" in message
    report = root / ".cache" / "dtd" / "missing-coop.txt"
    assert report.read_text().split() == ["images/banded/banded_0099.jpg", "images/braided/braided_0042.jpg"]
    assert not (root / "dtd").exists()


def test_label_out_of_range_is_refused(tmp_path, server):
    registry = dtd_with_split(tmp_path, server, lambda rows: rows["val"][0].__setitem__(1, 47))
    with pytest.raises(DataError, match=r"val\[0\]: label 47 is out of range 0..46"):
        prepare_dataset("dtd", tmp_path / "data", registry_dir=registry, http=FAST, echo=quiet)
    assert not (tmp_path / "data" / "dtd").exists()


def test_label_with_two_names_is_refused(tmp_path, server):
    registry = dtd_with_split(tmp_path, server, lambda rows: rows["test"][0].__setitem__(2, "blotchy"))
    with pytest.raises(DataError, match=r"label 0 is named 'blotchy' here but 'banded' at train\[0\]"):
        prepare_dataset("dtd", tmp_path / "data", registry_dir=registry, http=FAST, echo=quiet)


def test_class_names_must_match_the_registry(tmp_path, server):
    def rename(rows):
        for split in rows.values():
            for row in split:
                if row[1] == 1:
                    row[2] = "spotty"

    registry = dtd_with_split(tmp_path, server, rename)
    with pytest.raises(DataError, match=r"label 1: 'spotty' \(registry: 'blotchy'\)"):
        prepare_dataset("dtd", tmp_path / "data", registry_dir=registry, http=FAST, echo=quiet)


def test_manual_dataset_exits_2_with_steps(tmp_path, monkeypatch, capsys):
    from synthshot import cli

    monkeypatch.setattr(sys, "argv", ["synthshot", "datasets", "prepare", "stanford_cars", "--root", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "cannot be downloaded automatically" in err and "cars_train.tgz" in err
    assert "1. Get the original files" in err and "--from-archive" in err
    with pytest.raises(ManualDownloadRequired):
        prepare_dataset("imagenet", tmp_path, echo=quiet)
    assert not (tmp_path / "imagenet").exists() and not (tmp_path / ".cache").exists()


def kaggle_zip(with_test: bool = True) -> bytes:
    """jessicali9530/stanford-cars-dataset style: cars_train/cars_train/*.jpg, plus a devkit copy."""
    members = {}
    for path, data in cars_members().items():
        if path.startswith("cars_train/"):
            members["cars_train/" + path] = data
        elif path.startswith("cars_test/") and with_test:
            members["cars_test/" + path] = data
        elif path.startswith("devkit/"):
            members["car_devkit/" + path] = data
        elif path == "cars_test_annos_withlabels.mat":
            members["cars_test_annos_withlabels (1).mat"] = data
    members["cars_annos.mat"] = b"not used"
    return zip_bytes(members)


def test_repackaged_stanford_cars_is_located(tmp_path, server):
    registry = tmp_path / "registry"
    write_registry(registry, {"stanford_cars": entry_for("stanford_cars", server.base)})
    archive = tmp_path / "archive.zip"
    archive.write_bytes(kaggle_zip())
    root = tmp_path / "data"
    lines: list[str] = []
    result = prepare_dataset("stanford_cars", root, from_archives=[archive], registry_dir=registry, http=FAST,
                             echo=lines.append)
    assert (root / "stanford_cars" / "cars_train" / "00001.jpg").is_file()
    assert not (root / "stanford_cars" / "cars_train" / "cars_train").exists()
    assert load_coop_split(result.split_file, image_root=result.folder).missing_files() == []
    manifest = json.loads((result.folder / "synthshot" / "manifest.json").read_text())
    assert manifest["files"]["cars_train.tgz"]["verified"].startswith("user copy")
    # the official protocol finds devkit/ and the renamed annotations in the same copy
    official = prepare_dataset("stanford_cars", root, protocol="official", from_archives=[archive],
                               registry_dir=registry, http=FAST, echo=lines.append)
    assert official.counts["test"] == 6 and (root / "stanford_cars" / "devkit" / "cars_meta.mat").is_file()
    assert not (root / ".cache" / "stanford_cars" / "unpacked").exists()


def test_user_folder_named_like_prepares_scratch_is_left_alone(tmp_path, server):
    registry = tmp_path / "registry"
    write_registry(registry, {"stanford_cars": entry_for("stanford_cars", server.base)})
    archive = tmp_path / "archive.zip"
    archive.write_bytes(kaggle_zip())
    root = tmp_path / "data"
    mine = root / ".cache" / "stanford_cars" / "unpacked" / "archive" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    result = prepare_dataset("stanford_cars", root, from_archives=[archive], registry_dir=registry, http=FAST,
                             echo=quiet)
    assert result.status == "prepared" and mine.read_text() == "mine"
    assert not list((root / ".cache" / "stanford_cars").glob(".synthshot-unpack-*"))  # our scratch is gone


def test_extracted_copy_is_linked_and_an_incomplete_one_refused(tmp_path, server):
    registry = tmp_path / "registry"
    write_registry(registry, {"stanford_cars": entry_for("stanford_cars", server.base)})
    copy = tmp_path / "my_cars"
    for path, data in cars_members().items():
        (copy / "nested" / path).parent.mkdir(parents=True, exist_ok=True)
        (copy / "nested" / path).write_bytes(data)
    result = prepare_dataset("stanford_cars", tmp_path / "data", from_archives=[copy], registry_dir=registry,
                             http=FAST, echo=quiet)
    assert (result.folder / "cars_train").is_symlink()
    assert (copy / "nested" / "cars_train" / "00001.jpg").is_file()  # the user's copy is untouched

    incomplete = tmp_path / "incomplete.zip"
    incomplete.write_bytes(kaggle_zip(with_test=False))
    with pytest.raises(DataError, match="hold no copy of cars_test.tgz"):
        prepare_dataset("stanford_cars", tmp_path / "other", from_archives=[incomplete], registry_dir=registry,
                        http=FAST, echo=quiet)
    assert not (tmp_path / "other" / "stanford_cars").exists()


def test_verify_finds_a_deleted_image_and_a_changed_split(tmp_path, server, monkeypatch, capsys):
    registry = tmp_path / "registry"
    write_registry(registry, {"dtd": entry_for("dtd", server.base)})
    root = tmp_path / "data"
    result = prepare_dataset("dtd", root, registry_dir=registry, http=FAST, echo=quiet)
    assert verify_dataset("dtd", root, registry_dir=registry, echo=quiet).ok

    (result.folder / "images" / "blotchy" / "blotchy_0002.jpg").unlink()
    report = verify_dataset("dtd", root, registry_dir=registry, echo=quiet)
    assert not report.ok and "images/blotchy/blotchy_0002.jpg" in report.problems[0]

    from synthshot import cli

    monkeypatch.setattr(sys, "argv", ["synthshot", "datasets", "verify", "dtd", "--root", str(root),
                                      "--registry", str(registry)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2 and "blotchy_0002.jpg" in capsys.readouterr().err

    split = result.split_file
    split.write_text(split.read_text().replace('"banded"', '"Banded"'))
    problems = verify_dataset("dtd", root, registry_dir=registry, archives=False, echo=quiet).problems
    assert any("changed since prepare" in p for p in problems)


def test_val_carved_from_train_is_deterministic_and_per_class():
    rows = [(f"c{label}/{i:03d}.jpg", label) for label in range(3) for i in range(10)]
    train, val = carve_val(rows, 0.2)
    assert len(val) == 6 and len(train) == 24
    assert sorted({label for _, label in val}) == [0, 1, 2]
    assert carve_val(list(reversed(rows)), 0.2)[1] == [r for r in reversed(rows) if r in val]
    assert carve_val([("a.jpg", 0)], 0.2) == ([("a.jpg", 0)], [])


def test_mat_files_round_trip(tmp_path):
    variables = {
        "labels": [77.0, 77.0, 1.0],
        "class_names": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"],
        "annotations": [{"class": 3.0, "fname": "00001.jpg"}, {"class": 1.0, "fname": "00002.jpg"}],
        "title": "setid",
    }
    for compress in (False, True):
        path = tmp_path / f"x{compress}.mat"
        write_mat(path, variables, compress=compress)
        assert read_mat(path) == {
            "labels": [77.0, 77.0, 1.0],
            "class_names": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"],
            "annotations": [{"class": [3.0], "fname": "00001.jpg"}, {"class": [1.0], "fname": "00002.jpg"}],
            "title": "setid",
        }


def test_mat_reader_follows_the_format_spec_big_endian_small_elements(tmp_path):
    """A big-endian uint8 1x3 array named 'ab', hand-assembled from the MAT-file specification."""
    def element(kind, payload):
        return struct.pack(">II", kind, len(payload)) + payload + b"\0" * ((-len(payload)) % 8)

    small_name = struct.pack(">HH", 2, 1) + b"ab\0\0"  # small data element: size 2, miINT8
    body = element(6, struct.pack(">II", 9, 0)) + element(5, struct.pack(">ii", 1, 3)) + small_name
    body += element(2, bytes([5, 6, 7]))
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack(">H", 0x0100) + b"MI"
    path = tmp_path / "be.mat"
    path.write_bytes(header + element(14, body))
    assert read_mat(path) == {"ab": [5, 6, 7]}
    (tmp_path / "hdf.mat").write_bytes(b"\x89HDF" + b"\0" * 200)
    with pytest.raises(DataError, match="v7.3"):
        read_mat(tmp_path / "hdf.mat")


def test_cli_list_and_light_import(monkeypatch, capsys):
    from synthshot import cli

    monkeypatch.setattr(sys, "argv", ["synthshot", "datasets", "list"])
    cli.main()
    out = capsys.readouterr().out
    for name in ("dtd", "food101", "oxford_pets", "sun397", "eurosat", "fgvc_aircraft", "imagenet",
                 "oxford_flowers", "stanford_cars", "caltech101", "cub"):
        assert f"\n{name} " in out
    code = ("import sys, synthshot.cli; "
            "print(sorted(m for m in ('torch', 'PIL', 'numpy', 'tqdm', 'urllib.request') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "[]"



def test_extracted_imagenet_folders_are_linked(tmp_path):
    import io
    import tarfile

    user = tmp_path / "ILSVRC"
    up = upstream("imagenet")
    with tarfile.open(fileobj=io.BytesIO(up.files["ILSVRC2012_img_train.tar"])) as outer:
        for member in outer:
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for image in inner:
                    target = user / "train" / member.name[:-4] / image.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(inner.extractfile(image).read())
    wnids = sorted(p.name for p in (user / "train").iterdir())
    for i in range(1, 5):
        target = user / "val" / wnids[(i - 1) % 2] / f"ILSVRC2012_val_{i:08d}.JPEG"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"jpeg bytes")
    registry = tmp_path / "registry"
    write_registry(registry, {"imagenet": entry_for("imagenet", "http://127.0.0.1:9")})
    result = prepare_dataset("imagenet", tmp_path / "data", from_archives=[user], registry_dir=registry,
                             http=FAST, echo=quiet)
    assert result.counts == {"train": 6, "val": 4, "test": 4}
    assert (result.folder / "images" / "train").is_symlink() and (result.folder / "classnames.txt").is_file()


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_imagefolder_modes(tmp_path, mode):
    from synthshot.datasets.imagefolder import materialise

    for rel in ("images/b/x.jpg", "images/a/x.jpg", "images/a/y.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    split = {"train": [["images/a/x.jpg", 0, "F-16A/B"], ["images/b/x.jpg", 0, "F-16A/B"], ["images/a/y.jpg", 1, "b"]],
             "val": [], "test": []}
    view = materialise(tmp_path, "coop", split, 1000, mode)
    assert sorted(os.listdir(view / "train")) == ["000_f-16a_b", "001_b"]
    files = sorted(os.listdir(view / "train" / "000_f-16a_b"))
    assert files == ["images__b__x.jpg", "x.jpg"]  # a repeated file name keeps its source path
    assert (view / "train" / "000_f-16a_b" / "images__b__x.jpg").read_bytes() == b"images/b/x.jpg"
    assert (view / "train" / "001_b" / "y.jpg").is_symlink() == (mode == "symlink")
