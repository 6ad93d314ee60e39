"""Verified, resumable downloads from a real HTTP server on loopback: redirects, Range resume after
a truncated partial file or a dropped connection, 404 fallback, mirrors, HTML interstitials, and
hash mismatches that leave nothing final behind."""

from __future__ import annotations

import hashlib
import os

import pytest
from datasets_upstream import Upstreams, entry_for, upstream, write_registry

from synthshot.datasets.download import HttpOptions, fetch
from synthshot.datasets.prepare import prepare_dataset
from synthshot.datasets.registry import ExtractRule, FileSpec
from synthshot.errors import DataError

FAST = HttpOptions(timeout=10, retries=2, backoff=0.01, progress=False, offline=False)  # conftest sets HF_HUB_OFFLINE; this is loopback
DATA = bytes(range(256)) * 1200  # 300 kB, several 1 MiB-chunk boundaries are not needed


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def server():
    upstreams = Upstreams()
    upstreams.files["t/blob.bin"] = DATA
    upstreams.add("eurosat", upstream("eurosat"))
    upstreams.add("dtd", upstream("dtd"))
    yield upstreams
    upstreams.close()


def blob_spec(sha256: str | None = None, md5: str | None = None, size: int | None = len(DATA)) -> FileSpec:
    return FileSpec(
        id="blob", filename="blob.bin", urls=(), size=size, md5=md5,
        sha256=sha256 if sha256 is not None else hashlib.sha256(DATA).hexdigest(),
        checksums="test", protocols=None, extract=(ExtractRule("", ""),),
    )


def test_redirect_is_followed_and_hash_checked(tmp_path, server):
    start = len(server.log)
    got = fetch(blob_spec(), tmp_path, [f"{server.base}/redirect/files/t/blob.bin"], FAST, quiet)
    assert got.path.read_bytes() == DATA and got.verified == "sha256"
    assert [status for _, _, status in server.log[start:]] == [302, 200]
    assert not (tmp_path / "blob.bin.part").exists()


def test_truncated_partial_download_is_resumed(tmp_path, server):
    (tmp_path / "blob.bin.part").write_bytes(DATA[:100_000])  # what a killed run leaves
    start = len(server.log)
    got = fetch(blob_spec(), tmp_path, [f"{server.base}/files/t/blob.bin"], FAST, quiet)
    assert got.path.read_bytes() == DATA
    assert server.log[start:] == [("/files/t/blob.bin", "bytes=100000-", 206)]


def test_partial_file_of_another_version_is_discarded(tmp_path, server):
    (tmp_path / "blob.bin.part").write_bytes(b"X" * 1000)  # not a prefix of the file
    start = len(server.log)
    got = fetch(blob_spec(), tmp_path, [f"{server.base}/files/t/blob.bin"], FAST, quiet)
    assert got.path.read_bytes() == DATA
    assert server.log[start:] == [("/files/t/blob.bin", "bytes=1000-", 206), ("/files/t/blob.bin", None, 200)]


def test_dropped_connection_is_resumed_with_range(tmp_path, server):
    start = len(server.log)
    got = fetch(blob_spec(), tmp_path, [f"{server.base}/flaky/t/blob.bin"], FAST, quiet)
    assert got.path.read_bytes() == DATA
    log = server.log[start:]
    assert log[0] == ("/flaky/t/blob.bin", None, 200)
    assert log[1][1] == f"bytes={len(DATA) // 2}-" and log[1][2] == 206


def test_complete_partial_file_is_finished_without_download(tmp_path, server):
    (tmp_path / "blob.bin.part").write_bytes(DATA)
    start = len(server.log)
    got = fetch(blob_spec(), tmp_path, [f"{server.base}/files/t/blob.bin"], FAST, quiet)
    assert got.path.read_bytes() == DATA
    assert server.log[start:] == [("/files/t/blob.bin", f"bytes={len(DATA)}-", 416)]


def test_hash_mismatch_prints_expected_and_actual_and_keeps_nothing(tmp_path, server):
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(DataError) as err:
        fetch(blob_spec(sha256=wrong), tmp_path, [f"{server.base}/files/t/blob.bin"], FAST, quiet)
    message = str(err.value)
    assert f"expected {wrong}" in message and f"got {hashlib.sha256(DATA).hexdigest()}" in message
    assert list(tmp_path.iterdir()) == []  # no final file and no partial file


def test_md5_only_and_unverified_files(tmp_path, server):
    url = [f"{server.base}/files/t/blob.bin"]
    got = fetch(blob_spec(sha256="", md5=hashlib.md5(DATA).hexdigest()), tmp_path / "a", url, FAST, quiet)
    assert got.verified == "md5"
    got = fetch(blob_spec(sha256="", size=None), tmp_path / "b", url, FAST, quiet)
    assert got.verified == "unverified" and got.sha256 == hashlib.sha256(DATA).hexdigest()
    with pytest.raises(DataError, match=f"md5 mismatch, expected {'0' * 32}"):
        fetch(blob_spec(md5="0" * 32), tmp_path / "c", url, FAST, quiet)


@pytest.mark.parametrize("route", ["html", "disguised"])
def test_html_page_instead_of_the_file_is_a_clear_error(tmp_path, server, route):
    with pytest.raises(DataError, match="HTML page instead of the file") as err:
        fetch(blob_spec(size=None), tmp_path, [f"{server.base}/{route}/t/blob.bin"], FAST, quiet)
    assert "--from-archive" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_every_url_failing_lists_each_reason(tmp_path, server):
    urls = [f"{server.base}/missing/t/blob.bin", f"{server.base}/html/t/blob.bin"]
    with pytest.raises(DataError) as err:
        fetch(blob_spec(), tmp_path, urls, FAST, quiet)
    message = str(err.value)
    assert "HTTP 404" in message and "HTML page" in message and "--mirror" in message


def dead_links(entry):
    for spec in entry["files"]:
        spec["urls"] = [u.replace("/redirect/files/", "/missing/") for u in spec["urls"]]


def test_mirror_is_used_and_held_to_the_same_hashes(tmp_path, server, monkeypatch):
    registry = tmp_path / "registry"
    write_registry(registry, {"eurosat": entry_for("eurosat", server.base, dead_links)})
    with pytest.raises(DataError, match="could not download"):
        prepare_dataset("eurosat", tmp_path / "a", registry_dir=registry, http=FAST, echo=quiet)
    assert not (tmp_path / "a" / "eurosat").exists()

    start = len(server.log)
    result = prepare_dataset("eurosat", tmp_path / "b", mirrors=[f"{server.base}/m"], registry_dir=registry,
                             http=FAST, echo=quiet)
    assert result.status == "prepared"
    assert {path for path, _, status in server.log[start:] if status == 200} == {
        "/m/eurosat/EuroSAT.zip", "/m/eurosat/split_zhou_EuroSAT.json"}

    monkeypatch.setenv("SYNTHSHOT_DATASETS_MIRROR", f"{server.base}/m")
    assert prepare_dataset("eurosat", tmp_path / "c", registry_dir=registry, http=FAST, echo=quiet).status == "prepared"

    def corrupt_mirror(entry):  # a mirror serving other bytes than the registry's hash is refused
        dead_links(entry)
        entry["files"][0]["sha256"] = hashlib.sha256(b"other").hexdigest()
        entry["files"][0]["size"] = None

    write_registry(registry, {"eurosat": entry_for("eurosat", server.base, corrupt_mirror)})
    with pytest.raises(DataError, match="sha256 mismatch"):
        prepare_dataset("eurosat", tmp_path / "d", registry_dir=registry, http=FAST, echo=quiet)


def test_hash_mismatch_in_prepare_leaves_no_tree_and_no_file(tmp_path, server):
    wrong = hashlib.sha256(b"not the archive").hexdigest()

    def mutate(entry):
        entry["files"][0]["sha256"] = wrong

    registry = tmp_path / "registry"
    write_registry(registry, {"dtd": entry_for("dtd", server.base, mutate)})
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        prepare_dataset("dtd", root, registry_dir=registry, http=FAST, echo=quiet)
    assert f"expected {wrong}" in str(err.value)
    assert hashlib.sha256(upstream("dtd").files["dtd-r1.0.1.tar.gz"]).hexdigest() in str(err.value)
    assert not (root / "dtd").exists()
    assert os.listdir(root / ".cache" / "dtd") == []


def test_dry_run_makes_no_request_and_writes_nothing(tmp_path, server):
    registry = tmp_path / "registry"
    write_registry(registry, {"dtd": entry_for("dtd", server.base)})
    lines: list[str] = []
    start = len(server.log)
    result = prepare_dataset("dtd", tmp_path / "data", dry_run=True, registry_dir=registry, http=FAST,
                             echo=lines.append)
    assert result.status == "dry run" and server.log[start:] == []
    assert not (tmp_path / "data").exists()
    text = "\n".join(lines)
    assert "dtd-r1.0.1.tar.gz" in text and "terms:" in text and "sha256 pinned" in text
