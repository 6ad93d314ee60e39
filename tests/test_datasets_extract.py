"""Safe extraction: members that could escape the destination (absolute paths, `..`, links,
devices) reject the archive, nested archives are checked, and a failed prepare leaves no tree."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import zipfile
from pathlib import PurePosixPath

import pytest
from datasets_upstream import (
    Upstreams,
    entry_for,
    image,
    tar_bytes,
    upstream,
    write_registry,
)

from synthshot.datasets.download import HttpOptions
from synthshot.datasets.extract import UnsafeArchiveError, extract, target_for
from synthshot.datasets.prepare import prepare_dataset
from synthshot.datasets.registry import ExtractRule
from synthshot.errors import DataError

EVERYTHING = (ExtractRule("", ""),)
FAST = HttpOptions(timeout=10, retries=1, backoff=0.01, progress=False, offline=False)  # conftest sets HF_HUB_OFFLINE; this is loopback


def tar_with(kind: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("data/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        bad = tarfile.TarInfo({"parent": "data/../../evil.txt", "absolute": "/tmp/evil.txt"}.get(kind, "data/evil"))
        if kind in ("parent", "absolute"):
            bad.size = 4
            tar.addfile(bad, io.BytesIO(b"evil"))
        else:
            bad.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE,
                        "fifo": tarfile.FIFOTYPE}[kind]
            bad.linkname = "/etc/passwd"
            tar.addfile(bad)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink", "hardlink", "device", "fifo"])
def test_tar_member_that_could_escape_is_rejected(tmp_path, kind):
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_with(kind))
    dest = tmp_path / "staging"
    with pytest.raises(UnsafeArchiveError, match="refused"):
        extract(archive, dest, EVERYTHING, progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_zip_members_that_could_escape_are_rejected(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.txt", b"evil")
    with pytest.raises(UnsafeArchiveError, match="outside the dataset folder"):
        extract(archive, tmp_path / "dest", EVERYTHING, progress=False)

    link = zipfile.ZipInfo("data/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="link or special file"):
        extract(archive, tmp_path / "dest", EVERYTHING, progress=False)


def test_rules_strip_glob_flatten_and_stem():
    rules = (
        ExtractRule("dtd/", ""),
        ExtractRule("", "txt/", glob="*.txt", flatten=True),
        ExtractRule("", "images/train/{stem}/", glob="n*.JPEG"),
    )
    assert target_for(PurePosixPath("dtd/images/a/x.jpg"), rules)[1] == "images/a/x.jpg"
    assert target_for(PurePosixPath("Partitions/Training_01.txt"), rules)[1] == "txt/Training_01.txt"
    assert target_for(PurePosixPath("n0144_1.JPEG"), rules, stem="n0144")[1] == "images/train/n0144/n0144_1.JPEG"
    assert target_for(PurePosixPath("other/readme.md"), rules) is None


@pytest.fixture(scope="module")
def server():
    upstreams = Upstreams()
    yield upstreams
    upstreams.close()


def test_unsafe_archive_in_prepare_leaves_no_tree(tmp_path, server):
    up = upstream("dtd")
    members = {"dtd/images/banded/banded_0001.jpg": image(1), "dtd/../../escaped.txt": b"evil"}
    server.files["bad/dtd-r1.0.1.tar.gz"] = archive = tar_bytes(members)

    def mutate(entry):
        spec = entry["files"][0]
        spec.update(urls=[f"{server.base}/files/bad/dtd-r1.0.1.tar.gz"], size=len(archive),
                    md5=hashlib.md5(archive).hexdigest(), sha256=hashlib.sha256(archive).hexdigest())

    server.add("dtd", up)
    registry = tmp_path / "registry"
    write_registry(registry, {"dtd": entry_for("dtd", server.base, mutate)})
    root = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match="escaped.txt"):
        prepare_dataset("dtd", root, registry_dir=registry, http=FAST, echo=lambda *a: None)
    assert not (root / "dtd").exists()
    assert not list(root.glob(".dtd*"))
    assert not list(tmp_path.rglob("escaped.txt"))


def test_nested_archive_is_checked_against_its_own_hash(tmp_path, server):
    server.add("caltech101", upstream("caltech101"))
    wrong = hashlib.sha256(b"other inner archive").hexdigest()

    def mutate(entry):
        entry["files"][0]["extract"][0]["nested"]["sha256"] = wrong

    registry = tmp_path / "registry"
    write_registry(registry, {"caltech101": entry_for("caltech101", server.base, mutate)})
    root = tmp_path / "data"
    with pytest.raises(DataError, match=f"101_ObjectCategories.tar.gz inside caltech-101.zip: sha256 mismatch, expected {wrong}"):
        prepare_dataset("caltech101", root, registry_dir=registry, http=FAST, echo=lambda *a: None)
    assert not (root / "caltech-101").exists() and not list(root.glob(".caltech*"))
