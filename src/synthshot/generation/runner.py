"""Resumable, crash-safe generation bookkeeping around an injected renderer.

The runner owns the output folder, not the diffusion: it skips finished work items, renders the
rest in batches through `render`, and records each image in three steps: the image is written to
a temporary file (synthshot's own prefix), its manifest line is appended, and the temporary file
is renamed to its final name. A kill between the steps leaves a temporary file (removed on the
next run) or a record whose image is missing (dropped, and the item rendered again), never an
image without a record; so `reconcile` never needs to delete an image, and an image it finds
without a record is someone else's: it is left alone and named. The manifest is the only truth
about which items are finished, and a record counts only for the file its own id names.

Layout under `out_dir`:

    synthetic/<class_slug>/<id>.png|jpg
    manifest.jsonl        one line per finished image: the work item, `file`, run-level fields

Several processes (`accelerate launch`) share one folder this way: the main process reconciles
first, then each process appends to its own `manifest.rank<r>.jsonl` and never rewrites or
deletes anything, and the main process reconciles again at the end, which merges the per-process
manifests into `manifest.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from PIL import Image
from tqdm.auto import tqdm

from synthshot.errors import DataError, SynthshotError, describe_changes
from synthshot.generation.items import WorkItem
from synthshot.io import (
    TEMP_PREFIX,
    _umask,
    append_jsonl,
    atomic_write_text,
    quote,
    read_jsonl,
    remove_stale_temporaries,
    safe_join,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SYNTHETIC = "synthetic"
# File extension and PIL save arguments of each image format.
FORMATS = {
    "png": ("png", {"format": "PNG"}),
    "jpg": ("jpg", {"format": "JPEG", "quality": 95}),
    "jpeg": ("jpg", {"format": "JPEG", "quality": 95}),
}
IMAGE_SUFFIXES = {".png", ".jpg"}
DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

# Given a batch of items, one image per item, or the exception that stopped that item.
Renderer = Callable[[list[WorkItem]], list[Union[Image.Image, Exception]]]


@dataclass
class ReconcileReport:
    """What `reconcile` found and repaired in an output folder."""

    finished: dict[str, dict] = field(default_factory=dict)  # id -> manifest record, file present
    temporaries_removed: int = 0
    corrupt_lines: list[int] = field(default_factory=list)
    invalid_records: int = 0  # valid JSON without a usable `id` and `file`
    missing_files: list[str] = field(default_factory=list)  # ids whose image file is gone
    duplicates: list[str] = field(default_factory=list)  # ids recorded more than once
    foreign: list[str] = field(default_factory=list)  # files no record names, left alone (relative paths)
    rewritten: bool = False  # the manifest was rewritten with only the good records

    @property
    def finished_ids(self) -> set[str]:
        return set(self.finished)


@dataclass
class GenerationReport:
    """The outcome of one `run_generation` call."""

    done: list[str] = field(default_factory=list)  # ids finished by this call
    skipped: list[str] = field(default_factory=list)  # ids already finished before it
    failed: dict[str, str] = field(default_factory=dict)  # id -> what went wrong
    images_per_second: float = 0.0
    reconcile: ReconcileReport | None = None

    def raise_for_failures(self) -> None:
        """Raise a SynthshotError listing the failed items (the first 10), if any."""
        if not self.failed:
            return
        shown = "; ".join(f"{item_id}: {message}" for item_id, message in list(self.failed.items())[:10])
        more = f" (and {len(self.failed) - 10} more)" if len(self.failed) > 10 else ""
        raise SynthshotError(
            f"{len(self.failed)} image(s) failed: {shown}{more}. Fix the cause and rerun: "
            "finished images are kept and only the missing ones are rendered"
        )


def image_path(out_dir: str | os.PathLike, item: WorkItem, image_format: str = "png") -> Path:
    """Where the image of `item` is written."""
    extension, _ = _format(image_format)
    return safe_join(out_dir, SYNTHETIC, item.class_slug, f"{item.id}.{extension}")


def process_manifest(rank: int) -> str:
    """The manifest one process of a multi-process run appends to."""
    return f"manifest.rank{rank}.jsonl"


def _manifests(out_dir: Path) -> list[Path]:
    """The main manifest, then any per-process manifests, in a stable order."""
    return [out_dir / MANIFEST, *sorted(out_dir.glob("manifest.rank*.jsonl"))]


def _read_records(out_dir: Path, report: ReconcileReport) -> list[dict]:
    """The records of every manifest, main first; corrupt lines are logged, and those of the main
    manifest noted (per-process manifests are rewritten into the main one anyway)."""
    records = []
    for manifest in _manifests(out_dir):
        found, corrupt = read_jsonl(manifest)
        for number in corrupt:
            logger.warning("%s line %d is corrupt: the item will be regenerated", manifest, number)
        if manifest.name == MANIFEST:
            report.corrupt_lines = corrupt
        records.extend(found)
    return records


def _own_file(record: dict) -> str | None:
    """The only file a record may name: `synthetic/<class_slug>/<id>.<png|jpg>`."""
    item_id, slug, relative = record.get("id"), record.get("class_slug"), record.get("file")
    if not all(isinstance(v, str) and v and "/" not in v and "\\" not in v for v in (item_id, slug)):
        return None
    for suffix in IMAGE_SUFFIXES:
        if relative == f"{SYNTHETIC}/{slug}/{item_id}{suffix}":
            return relative
    return None


def _collect_finished(out_dir: Path, records: list[dict], report: ReconcileReport) -> set[Path]:
    """Fill `report.finished` with the first usable record of each id whose image exists, note
    what was dropped, and return the image paths the kept records name. A record that names any
    file but its own item's (another item's image, a file outside the set) is dropped."""
    manifest = out_dir / MANIFEST
    kept_files: set[Path] = set()
    for record in records:
        item_id, relative = record.get("id"), record.get("file")
        if not isinstance(item_id, str) or not isinstance(relative, str):
            report.invalid_records += 1
            logger.warning("%s has a record without a text `id` and `file`: it is dropped", manifest)
            continue
        if item_id in report.finished:
            report.duplicates.append(item_id)
            logger.warning("%s: item %r is recorded more than once (made twice?): the first record is kept",
                           manifest, item_id)
            continue
        if _own_file(record) is None:
            report.invalid_records += 1
            logger.warning("%s record %r names the file %r, which is not its own item's: it is dropped",
                           manifest, item_id, relative)
            continue
        try:
            path = safe_join(out_dir, relative)
        except DataError as exc:
            report.invalid_records += 1
            logger.warning("%s record %r: %s; it is dropped", manifest, item_id, exc)
            continue
        if not path.is_file():
            report.missing_files.append(item_id)
            logger.warning("%s names %s, which is missing: the item will be regenerated", manifest, relative)
            continue
        report.finished[item_id] = record
        kept_files.add(path)
    return kept_files


def finished_records(out_dir: str | os.PathLike) -> dict[str, dict]:
    """Finished items (a record whose image exists) across all manifests, changing nothing: what
    each process of a multi-process run reads after the main process reconciled."""
    out_dir = Path(out_dir)
    report = ReconcileReport()
    _collect_finished(out_dir, _read_records(out_dir, report), report)
    return report.finished


def reconcile(out_dir: str | os.PathLike) -> ReconcileReport:
    """Make `out_dir` consistent after any crash; return what was found and done.

    Removes synthshot's stale temporary files (in the folders it writes), drops corrupt manifest
    lines, records without their image, records that name another item's file and repeated
    records of one id (the first good one is kept), and rewrites the manifest atomically if
    anything was dropped or per-process manifests were merged. Files that no record names are
    never deleted: they are listed in `foreign` and left where they are. Only one process may call
    it at a time.
    """
    out_dir = Path(out_dir)
    report = ReconcileReport()
    if not out_dir.exists():
        return report
    synthetic = out_dir / SYNTHETIC
    class_folders = sorted(p for p in synthetic.iterdir() if p.is_dir()) if synthetic.is_dir() else []
    report.temporaries_removed = remove_stale_temporaries(out_dir, *class_folders)
    manifest = out_dir / MANIFEST
    kept_files = _collect_finished(out_dir, _read_records(out_dir, report), report)

    root = out_dir.resolve()
    for folder in class_folders:
        for path in sorted(folder.iterdir()):
            if path.resolve() not in kept_files and not path.name.startswith(TEMP_PREFIX):
                report.foreign.append(path.relative_to(out_dir).as_posix())
    if report.foreign:
        logger.warning(
            "%d file(s) under %s are not images this set recorded (e.g. %r): they are left alone and not used",
            len(report.foreign), root / SYNTHETIC, report.foreign[0],
        )

    process_manifests = _manifests(out_dir)[1:]
    dropped = report.corrupt_lines or report.invalid_records or report.missing_files or report.duplicates
    if dropped or process_manifests:
        atomic_write_text(manifest, "".join(_manifest_line(record) for record in report.finished.values()))
        report.rewritten = True
        for merged in process_manifests:
            merged.unlink()
    return report


def run_generation(
    items: list[WorkItem],
    render: Renderer,
    out_dir: str | os.PathLike,
    *,
    batch_size: int,
    image_format: str = "png",
    record_extra: dict | None = None,
    progress: bool = True,
    manifest_name: str = MANIFEST,
    reconcile_first: bool = True,
    fingerprint: Callable[[WorkItem], str] | None = None,
) -> GenerationReport:
    """Render the unfinished `items` into `out_dir`, resuming whatever a previous run left.

    Items that fail (the renderer returned or raised an exception for them) are reported in
    `GenerationReport.failed` while all others are finished; call `raise_for_failures()` to turn
    them into an error. A full disk stops the run with a SynthshotError; rerunning resumes.
    In a multi-process run each process passes its own `manifest_name` (`process_manifest(rank)`)
    and `reconcile_first=False`, after the main process called `reconcile`.

    With `fingerprint` (item -> the fingerprint of everything its image depends on, see
    `generation/fingerprint.py`), each record carries its item's fingerprint, and a finished image
    whose record carries another one is never reused: the call stops with an error naming what
    changed (from the records' `settings`, when `record_extra` holds them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _, save_options = _format(image_format)
    record_extra = dict(record_extra or {})
    clashes = sorted(set(record_extra) & ({f.name for f in dataclasses.fields(WorkItem)} | {"file", "fingerprint"}))
    if clashes:
        raise ValueError(f"record_extra keys {clashes} would overwrite work item fields: rename them")
    try:
        json.dumps(record_extra)
    except TypeError as exc:
        raise ValueError(f"record_extra must hold JSON values only: {exc}") from None
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        repeated = sorted(item_id for item_id, n in Counter(ids).items() if n > 1)
        raise DataError(f"work items repeat the ids {repeated[:10]}: plan each image once")
    out_dir = Path(out_dir)
    manifest = out_dir / manifest_name

    # 1. Make the folder consistent and find what is already finished.
    reconciled = reconcile(out_dir) if reconcile_first else None
    finished = reconciled.finished if reconciled else finished_records(out_dir)
    report = GenerationReport(reconcile=reconciled)
    if fingerprint is not None:
        _check_reusable(items, finished, fingerprint, record_extra.get("settings"), out_dir)
    report.skipped = [item.id for item in items if item.id in finished]
    todo = [item for item in items if item.id not in finished]

    # 2. Render the rest in batches; write each image, then its manifest line.
    start = time.perf_counter()
    with tqdm(total=len(todo), unit="img", desc="generate", disable=not progress) as bar:
        for first in range(0, len(todo), batch_size):
            batch = todo[first : first + batch_size]
            for item, result in zip(batch, _render_batch(render, batch)):
                if isinstance(result, Exception):
                    report.failed[item.id] = f"{result.__class__.__name__}: {result}"
                    logger.warning("item %s failed: %s", item.id, report.failed[item.id])
                else:
                    path = image_path(out_dir, item, image_format)
                    record = {**item.to_record(), "file": path.relative_to(out_dir.resolve()).as_posix(), **record_extra}
                    if fingerprint is not None:
                        record["fingerprint"] = fingerprint(item)
                    _write_item(result, path, save_options, manifest, record, out_dir)
                    report.done.append(item.id)
                bar.update(1)
    elapsed = time.perf_counter() - start
    report.images_per_second = len(report.done) / elapsed if report.done and elapsed > 0 else 0.0
    return report


def _check_reusable(items: list[WorkItem], finished: dict[str, dict], fingerprint, settings: dict | None,
                    out_dir: Path) -> None:
    """Refuse to reuse (or add to) images made from other settings or other inputs."""
    stale = [item for item in items if item.id in finished and finished[item.id].get("fingerprint") != fingerprint(item)]
    if not stale:
        return
    record = finished[stale[0].id]
    recorded = record.get("settings")
    if settings is None:
        changes = []
    elif isinstance(recorded, dict):
        changes = describe_changes(recorded, settings)
    else:
        changes = ["settings not recorded (made by an earlier version)"]
    if not changes:
        changes = ["the same settings, but other work item inputs (prompt, positive or negative image)"]
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    raise DataError(
        f"{out_dir} holds {len(stale)} image(s) made with other settings than this run's (e.g. {stale[0].id}: "
        f"{shown}): restore those settings, or leave synthetic_dir unset (each setting then gets its own set "
        "folder), or point synthetic_dir at a new folder"
    )


def _render_batch(render: Renderer, batch: list[WorkItem]) -> list:
    """Render a batch; if the renderer fails for the whole batch, retry each item alone so that
    one bad item does not fail its batch mates."""
    try:
        results = render(batch)
        if not isinstance(results, (list, tuple)) or len(results) != len(batch):
            count = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
            raise RuntimeError(f"the renderer returned {count} results for a batch of {len(batch)}")
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
        logger.warning("rendering a batch of %d failed (%s): retrying each item alone", len(batch), exc)
        return [_render_batch(render, [item])[0] for item in batch]
    return [_check_image(result) for result in results]


def _check_image(result):
    if isinstance(result, (Exception, Image.Image)):
        return result
    return TypeError(f"the renderer returned a {type(result).__name__}, not a PIL image")


def _write_item(image, path: Path, save_options: dict, manifest: Path, record: dict, out_dir: Path) -> None:
    """Write an item's image to a temporary file, append its record, then rename the image into
    place; on failure, roll back to the state before (no partial line, no image without a
    record). A file already at `path` that no record names is someone else's: refused."""
    if path.exists() or path.is_symlink():
        raise DataError(
            f"{quote(path)} already exists but no manifest record of {quote(out_dir)} names it: synthshot does not "
            "write over files it did not record; move it away and rerun"
        )
    if save_options["format"] == "JPEG" and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    size = manifest.stat().st_size if manifest.exists() else None
    try:
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, **save_options)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only
        except OSError as exc:
            raise _write_error(exc, path, out_dir) from exc
        try:
            append_jsonl(manifest, record)
        except OSError as exc:
            raise _write_error(exc, manifest, out_dir) from exc
        try:
            os.link(tmp, path)  # never replaces: a file that appeared meanwhile is not overwritten
        except FileExistsError:
            raise DataError(f"{quote(path)} appeared while its image was written: move it away and rerun") from None
        except OSError:
            os.replace(tmp, path)  # file systems without hard links
    except BaseException:
        # Truncating needs no free space, so the manifest stays valid even on a full disk.
        if manifest.exists():
            os.truncate(manifest, size or 0)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_error(exc: OSError, path: Path, out_dir: Path) -> SynthshotError:
    if exc.errno in DISK_FULL:
        return SynthshotError(
            f"the disk at {out_dir} is full (while writing {path}): free some space and rerun the "
            "same command; it resumes where it stopped and keeps the images already written"
        )
    return SynthshotError(f"cannot write {path}: {exc.strerror or exc}; rerunning resumes where it stopped")


def _manifest_line(record: dict) -> str:
    # The same serialisation as io.append_jsonl, so a rewritten manifest reads like an appended one.
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def _format(image_format: str) -> tuple[str, dict]:
    try:
        return FORMATS[image_format.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"image format {image_format!r} is not one of {sorted(FORMATS)}") from None
