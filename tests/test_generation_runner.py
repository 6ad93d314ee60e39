"""Resumable, crash-safe generation: the runner around a fake renderer that draws from item seeds."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthshot.errors import DataError, SynthshotError
from synthshot.generation import runner
from synthshot.generation.items import WorkItem, item_noise_seed, plan_items, shard_items
from synthshot.generation.runner import MANIFEST, reconcile, run_generation
from synthshot.io import TEMP_PREFIX, read_jsonl

EXTRA = {"steps": 50, "scheduler": "dpm", "scales": {"w_text": 7.5, "w_pos": 6.0, "w_neg": 6.0}, "mode": "dual"}


def make_items(per_class: int = 3) -> list[WorkItem]:
    split = {"cat": ["cat/0.jpg", "cat/1.jpg"], "dog": ["dog/0.jpg"], "red fox": ["fox/0.jpg", "fox/1.jpg"]}
    prompts = {name: f"a photo of a {name}" for name in split}
    return plan_items(split, images_per_class=per_class, base_seed=3, prompts=prompts, mode="dual", negative_probs=None)


def draw(item: WorkItem) -> Image.Image:
    """A deterministic image from the item's seeds: noise from the noise seed, a band coloured by the seed."""
    pixels = np.random.default_rng(item_noise_seed(item)).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels[:4] = list(item.seed.to_bytes(8, "big")[:3])
    return Image.fromarray(pixels)


def fake_render(batch: list[WorkItem]) -> list[Image.Image]:
    return [draw(item) for item in batch]


class CountingRenderer:
    """Counts calls and rendered items; `fail` maps ids to the exception returned for them."""

    def __init__(self, fail: dict[str, Exception] | None = None, raise_for_batches: bool = False):
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.raise_for_batches = raise_for_batches

    def __call__(self, batch):
        self.calls.append([item.id for item in batch])
        if self.raise_for_batches and len(batch) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return [self.fail.get(item.id) or draw(item) for item in batch]

    @property
    def rendered(self) -> list[str]:
        return [item_id for call in self.calls for item_id in call]


def run(items, out_dir, render=fake_render, batch_size=2, **kwargs):
    return run_generation(items, render, out_dir, batch_size=batch_size, record_extra=EXTRA, progress=False, **kwargs)


def snapshot(out_dir: Path) -> dict[str, tuple[dict, bytes]]:
    """id -> (manifest record, image bytes); asserts the folder is clean and the manifest valid."""
    records, corrupt = read_jsonl(out_dir / MANIFEST)
    assert corrupt == []
    ids = [record["id"] for record in records]
    assert len(ids) == len(set(ids)), "one record per id"
    files = {p.relative_to(out_dir).as_posix() for p in (out_dir / "synthetic").rglob("*") if p.is_file()}
    assert files == {record["file"] for record in records}, "no orphan, temporary or missing file"
    return {record["id"]: (record, (out_dir / record["file"]).read_bytes()) for record in records}


def test_full_run_writes_images_and_manifest(tmp_path):
    items = make_items()
    report = run(items, tmp_path)
    assert report.done == [item.id for item in items] and report.skipped == [] and report.failed == {}
    assert report.images_per_second > 0
    result = snapshot(tmp_path)
    assert set(result) == {item.id for item in items}
    for item in items:
        record, data = result[item.id]
        assert record["file"] == f"synthetic/{item.class_slug}/{item.id}.png"
        assert WorkItem.from_record(record) == item
        assert {key: record[key] for key in EXTRA} == EXTRA
        with Image.open(tmp_path / record["file"]) as image:
            assert np.array_equal(np.asarray(image), np.asarray(draw(item)))
    assert (tmp_path / "synthetic" / "red_fox").is_dir()


def test_rerun_skips_everything(tmp_path):
    items = make_items()
    run(items, tmp_path)
    before = snapshot(tmp_path)
    render = CountingRenderer()
    report = run(items, tmp_path, render=render)
    assert render.calls == [] and report.done == [] and report.skipped == [item.id for item in items]
    assert snapshot(tmp_path) == before


def test_batch_size_does_not_change_the_output(tmp_path):
    items = make_items()
    run(items, tmp_path / "one", batch_size=1)
    run(items, tmp_path / "three", batch_size=3)
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "three")


def test_sharded_runs_equal_one_run(tmp_path):
    items = make_items()
    run(items, tmp_path / "whole")
    first = run(shard_items(items, 0, 2), tmp_path / "sharded")
    second = run(shard_items(items, 1, 2), tmp_path / "sharded")
    assert sorted(first.done + second.done) == sorted(item.id for item in items)
    assert snapshot(tmp_path / "sharded") == snapshot(tmp_path / "whole")


def test_jpeg_output(tmp_path):
    items = make_items(1)
    run(items, tmp_path, image_format="jpeg")
    for record, data in snapshot(tmp_path).values():
        assert record["file"].endswith(".jpg") and data[:2] == b"\xff\xd8"


def test_failed_item_does_not_stop_the_others(tmp_path):
    items = make_items()
    bad = items[1].id
    render = CountingRenderer(fail={bad: OSError("cannot read positive image cat/1.jpg")})
    report = run(items, tmp_path, render=render)
    assert report.failed == {bad: "OSError: cannot read positive image cat/1.jpg"}
    assert report.done == [item.id for item in items if item.id != bad]
    assert set(snapshot(tmp_path)) == set(report.done)
    with pytest.raises(SynthshotError, match=f"1 image\\(s\\) failed: {bad}: OSError: cannot read positive image cat/1.jpg"):
        report.raise_for_failures()

    render = CountingRenderer()
    report = run(items, tmp_path, render=render)
    assert render.rendered == [bad] and report.failed == {}
    report.raise_for_failures()


def test_renderer_raising_for_a_batch_is_retried_per_item(tmp_path):
    out = tmp_path / "out"
    items = make_items()
    render = CountingRenderer(raise_for_batches=True)
    report = run(items, out, render=render, batch_size=3)
    assert report.failed == {} and len(report.done) == len(items)
    assert [len(call) for call in render.calls] == [3, 1, 1, 1] * 3
    assert snapshot(out) == _reference(tmp_path, items)


def test_one_bad_item_in_a_raising_batch_fails_alone(tmp_path):
    items = make_items()
    bad = items[4].id

    def render(batch):
        if any(item.id == bad for item in batch):
            raise ValueError(f"positive image {items[4].positive_file} is unreadable")
        return fake_render(batch)

    report = run(items, tmp_path, render=render, batch_size=3)
    assert list(report.failed) == [bad] and items[4].positive_file in report.failed[bad]
    assert len(report.done) == len(items) - 1


def test_renderer_returning_the_wrong_count_is_retried_per_item(tmp_path):
    items = make_items(1)
    report = run(items, tmp_path, render=lambda batch: fake_render(batch)[:1], batch_size=3)
    assert report.failed == {} and len(report.done) == 3


def test_non_image_result_fails_the_item(tmp_path):
    items = make_items(1)
    report = run(items, tmp_path, render=lambda batch: [None] * len(batch))
    assert set(report.failed) == {item.id for item in items}
    assert "not a PIL image" in report.failed[items[0].id]


def test_corrupt_manifest_line_is_reported_and_regenerated(tmp_path, caplog):
    out = tmp_path / "out"
    items = make_items()
    run(items, out)
    manifest = out / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    lost = json.loads(lines[1])["id"]
    lines[1] = '{"id": "cat-0000\x00 garbage\n'
    manifest.write_text("".join(lines))

    with caplog.at_level(logging.WARNING, logger="synthshot.generation.runner"):
        report = reconcile(out)
    assert "manifest.jsonl line 2 is corrupt: the item will be regenerated" in caplog.text
    assert report.corrupt_lines == [2] and report.rewritten
    # Its image is no longer recorded, so it is not provably synthshot's: it is kept and named.
    stray = next(p for p in (out / "synthetic").rglob(f"{lost}.png"))
    assert report.foreign == [stray.relative_to(out).as_posix()]
    with pytest.raises(DataError, match="move it away"):
        run(items, out)
    stray.unlink()
    render = CountingRenderer()
    report = run(items, out, render=render)
    assert render.rendered == [lost] and report.done == [lost]
    assert snapshot(out) == _reference(tmp_path, items)


def test_an_image_without_a_record_is_left_alone_and_never_written_over(tmp_path, caplog):
    """An image no record names is not synthshot's (its own writes record before the rename): it
    stays, is named, and the item whose file it occupies stops with a one-line error."""
    out = tmp_path / "out"
    items = make_items()
    run(items, out)
    manifest = out / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:-1]))
    stranger = json.loads(lines[-1])
    before = (out / stranger["file"]).read_bytes()

    with caplog.at_level(logging.WARNING, logger="synthshot.generation.runner"):
        report = reconcile(out)
    assert report.foreign == [stranger["file"]] and "left alone" in caplog.text
    with pytest.raises(DataError, match=r"already exists but no manifest record .*names it.*move it away") as info:
        run(items, out)
    assert "\n" not in str(info.value)
    assert (out / stranger["file"]).read_bytes() == before
    (out / stranger["file"]).unlink()  # the user moves it away
    render = CountingRenderer()
    run(items, out, render=render)
    assert render.rendered == [stranger["id"]]
    assert snapshot(out) == _reference(tmp_path, items)


def test_users_files_in_the_output_folder_survive(tmp_path):
    """The user's own images under synthetic/ and their own `.tmp-*` files anywhere are kept."""
    out = tmp_path / "out"
    items = make_items()
    theirs = {
        out / "synthetic" / "cat" / "my_cat.png": b"my own cat",
        out / "synthetic" / "holiday" / "beach.jpg": b"a beach",
        out / "synthetic" / "cat" / ".tmp-draft.png": b"my draft",
        out / ".tmp-notes.txt": b"notes",
        out / "deep" / "er" / ".tmp-x.png": b"x",
        out / "synthetic" / "cat" / "sub" / ".synthshot-tmp-not-ours-here.png": b"y",
    }
    for path, data in theirs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    report = run(items, out)
    assert len(report.done) == len(items)
    assert report.reconcile.foreign == [
        "synthetic/cat/.tmp-draft.png", "synthetic/cat/my_cat.png", "synthetic/cat/sub", "synthetic/holiday/beach.jpg"]
    run(items, out)
    for path, data in theirs.items():
        assert path.read_bytes() == data, path


def test_a_record_naming_another_items_file_is_not_that_item(tmp_path):
    out = tmp_path / "out"
    items = make_items()
    run(items, out)
    manifest = out / MANIFEST
    records, _ = read_jsonl(manifest)
    (out / records[1]["file"]).unlink()
    records[1]["file"] = records[0]["file"]  # points at its neighbour's image
    records[2]["file"] = "../elsewhere.png"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))

    report = reconcile(out)
    assert records[1]["id"] not in report.finished and records[2]["id"] not in report.finished
    assert report.invalid_records == 2 and report.rewritten
    # The neighbour's image stays its own; the file of record 2 is its own item's and is not foreign.
    assert report.foreign == [f"synthetic/{records[2]['class_slug']}/{records[2]['id']}.png"]


def test_partial_last_manifest_line_is_regenerated(tmp_path):
    out = tmp_path / "out"
    items = make_items()
    run(items, out)
    manifest = out / MANIFEST
    data = manifest.read_bytes()
    last = json.loads(data.splitlines()[-1])
    manifest.write_bytes(data[:-10])  # killed in the middle of the last append,
    (out / last["file"]).unlink()  # so before its image was renamed into place
    render = CountingRenderer()
    run(items, out, render=render)
    assert render.rendered == [items[-1].id]
    assert snapshot(out) == _reference(tmp_path, items)


def test_missing_file_and_duplicate_records(tmp_path):
    out = tmp_path / "out"
    items = make_items()
    run(items, out)
    manifest = out / MANIFEST
    records, _ = read_jsonl(manifest)
    (out / records[0]["file"]).unlink()
    with open(manifest, "a") as handle:
        handle.write(json.dumps({**records[3], "steps": 999}) + "\n")
        handle.write(json.dumps({"no": "id"}) + "\n")

    report = reconcile(out)
    assert report.missing_files == [records[0]["id"]] and report.duplicates == [records[3]["id"]]
    assert report.invalid_records == 1 and report.rewritten
    assert report.finished[records[3]["id"]]["steps"] == 50  # the first record is kept
    render = CountingRenderer()
    run(items, out, render=render)
    assert render.rendered == [records[0]["id"]]
    assert snapshot(out) == _reference(tmp_path, items)


def test_stale_temporary_is_removed(tmp_path):
    items = make_items()
    run(items, tmp_path)
    stale = tmp_path / "synthetic" / "cat" / f"{TEMP_PREFIX}abc123.png"
    stale.write_bytes(b"half an image")
    render = CountingRenderer()
    report = run(items, tmp_path, render=render)
    assert not stale.exists() and report.reconcile.temporaries_removed == 1 and render.calls == []


def test_reconcile_of_a_missing_folder_is_empty(tmp_path):
    report = reconcile(tmp_path / "nothing")
    assert report.finished == {} and not report.rewritten


def test_disk_full_while_writing_an_image(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_items()
    real_save = Image.Image.save
    calls = {"n": 0}

    def save(self, fp, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            fp.write(b"half an image")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(SynthshotError, match=f"the disk at {re.escape(str(out))} is full .*rerun"):
        run(items, out)
    monkeypatch.undo()

    written = snapshot(out)  # also checks: no temporary, no orphan, manifest valid
    assert set(written) == {item.id for item in items[:4]}
    assert not list(out.rglob(f"{TEMP_PREFIX}*"))
    render = CountingRenderer()
    run(items, out, render=render)
    assert render.rendered == [item.id for item in items[4:]]
    assert snapshot(out) == _reference(tmp_path, items)


def test_disk_full_while_appending_to_the_manifest(tmp_path, monkeypatch):
    out = tmp_path / "out"
    items = make_items()
    real_append = runner.append_jsonl
    calls = {"n": 0}

    def append(path, record):
        calls["n"] += 1
        if calls["n"] > 2:
            with open(path, "ab") as handle:
                handle.write(b'{"id": "half a li')
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, record)

    monkeypatch.setattr(runner, "append_jsonl", append)
    with pytest.raises(SynthshotError, match="is full"):
        run(items, out)
    monkeypatch.undo()

    assert set(snapshot(out)) == {item.id for item in items[:2]}  # no partial line, no orphan
    run(items, out)
    assert snapshot(out) == _reference(tmp_path, items)


def test_bad_arguments(tmp_path):
    items = make_items(1)
    with pytest.raises(ValueError, match="batch_size"):
        run(items, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="image format"):
        run(items, tmp_path, image_format="gif")
    with pytest.raises(ValueError, match="overwrite"):
        run_generation(items, fake_render, tmp_path, batch_size=1, record_extra={"seed": 1})
    with pytest.raises(SynthshotError, match="repeat the ids"):
        run(items + items[:1], tmp_path)


def test_progress_bar_runs(tmp_path, capsys):
    run_generation(make_items(1), fake_render, tmp_path, batch_size=2, progress=True)
    assert "img" in capsys.readouterr().err


KILLED_RUN = """
import sys, time
sys.path.insert(0, {tests!r})
from test_generation_runner import EXTRA, fake_render, make_items
from synthshot.generation.runner import run_generation

def slow_render(batch):
    time.sleep(0.05 * len(batch))
    return fake_render(batch)

run_generation(make_items(14), slow_render, {out!r}, batch_size=3, record_extra=EXTRA, progress=False)
"""


def test_resume_after_a_real_kill(tmp_path):
    items = make_items(14)  # 42 items
    out = tmp_path / "killed"
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out)))
    process = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            manifest = out / MANIFEST
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    finished_before = len(read_jsonl(out / MANIFEST)[0])
    assert 5 <= finished_before < len(items)

    render = CountingRenderer()
    report = run(items, out, render=render, batch_size=4)
    assert report.failed == {} and len(report.skipped) + len(report.done) == len(items)
    assert len(render.rendered) == len(items) - len(report.skipped)
    assert not list(out.rglob(f"{TEMP_PREFIX}*"))
    assert snapshot(out) == _reference(tmp_path, items)


def _reference(tmp_path: Path, items: list[WorkItem]) -> dict:
    """The output of an uninterrupted run of `items`, in a folder of its own."""
    reference = tmp_path / "reference"
    run(items, reference, batch_size=5)
    return snapshot(reference)


def test_processes_append_to_their_own_manifests_and_reconcile_merges_them(tmp_path):
    """The multi-process protocol (accelerate launch): the main process reconciles, each process
    appends to manifest.rank<r>.jsonl without reconciling, and a final reconcile merges."""
    from synthshot.generation.items import shard_items
    from synthshot.generation.runner import finished_records, process_manifest

    items = make_items()
    out = tmp_path / "shared"
    # A previous single-process run finished two items.
    run(items[:2], out)
    reconcile(out)
    for rank in range(2):
        report = run(shard_items(items, rank, 2), out, manifest_name=process_manifest(rank), reconcile_first=False)
        assert set(report.skipped) == {item.id for item in shard_items(items, rank, 2)} & {i.id for i in items[:2]}
    assert (out / "manifest.rank0.jsonl").is_file() and (out / "manifest.rank1.jsonl").is_file()
    assert set(finished_records(out)) == {item.id for item in items}

    merged = reconcile(out)
    assert merged.rewritten and merged.foreign == []
    assert not list(out.glob("manifest.rank*.jsonl"))
    assert snapshot(out) == _reference(tmp_path, items)
