"""Crash-safe file output: every file synthshot writes appears whole or not at all.

Writes go to a temporary file in the destination folder, are flushed to disk, then renamed over
the destination (an atomic step on POSIX and Windows). A kill at any moment therefore leaves
either the old file or the new one, plus at worst a stray `.synthshot-tmp-*` file that readers
ignore and `remove_stale_temporaries` cleans up.

synthshot deletes, moves or overwrites only what it wrote and recorded: files with its own
temporary prefix, items in its manifests, and folders that carry its marker (`claim_folder`).
Anything else in its way is left alone and named in a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from synthshot.errors import DataError

TEMP_PREFIX = ".synthshot-tmp-"
MARKER = ".synthshot"  # the folder that marks a folder as synthshot's own


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file for writing that only replaces `path` once the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        # mkstemp makes the file owner-only; give it the mode a plain open() would.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def remove_stale_temporaries(*folders: str | os.PathLike) -> int:
    """Delete the `.synthshot-tmp-*` files a killed writer left directly in `folders` (not in
    their subfolders: only where synthshot writes); return how many."""
    removed = 0
    for folder in folders:
        for tmp in Path(folder).glob(f"{TEMP_PREFIX}*"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
                removed += 1
    return removed


def check_claimable(folder: str | os.PathLike, what: str, *, legacy: tuple[str, ...] = ()) -> None:
    """The error `claim_folder` would raise, without creating anything (for processes that must
    not write but must stop as the writer would)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the {what} {quote(folder)} is a file, not a folder: choose another path")
    if not folder.exists() or (folder / MARKER).is_dir() or any((folder / name).exists() for name in legacy):
        return
    entries = sorted(p for p in folder.iterdir())
    if entries:
        raise DataError(
            f"the {what} {quote(folder)} already holds files synthshot did not write (e.g. {quote(entries[0].name)}): "
            "synthshot never writes over them; choose a new or empty folder"
        )


def claim_folder(folder: str | os.PathLike, what: str, *, legacy: tuple[str, ...] = ()) -> Path:
    """Make `folder` synthshot's before writing into it, or refuse.

    A missing or empty folder is created with the marker folder (`.synthshot/`); a folder that
    has the marker (or one of the `legacy` files that earlier versions left as their mark) is
    accepted; any other folder holds someone else's files and is refused with an error naming it
    and one of those files, so that nothing of theirs is ever overwritten or deleted.
    """
    folder = Path(folder)
    check_claimable(folder, what, legacy=legacy)
    (folder / MARKER).mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, echo=None) -> Iterator[None]:
    """Hold an exclusive lock on a folder of synthshot's (`.synthshot/lock`) for the block: another
    process asking for it (a sweep run of a job array writing the same shared set) waits until the
    block ends, then finds the work done. A no-op where the OS has no `fcntl` locks."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per folder is then the user's to ensure
        yield
        return
    path = Path(folder) / MARKER / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if echo is not None:
                echo(f"waiting for another synthshot process that writes into {folder}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def swap_in_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put a finished staging folder (made with `tempfile.mkdtemp`, so owner-only) at `target`,
    replacing a folder of synthshot's there: the old one is moved aside, the new one renamed in,
    then the old one removed, so `target` is never half written. The caller has checked that an
    existing `target` is its own to replace."""
    import shutil

    staging, target = Path(staging), Path(target)
    os.chmod(staging, 0o777 & ~_umask())
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}-old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old)


def is_claimed(folder: str | os.PathLike) -> bool:
    """Whether `folder` carries synthshot's marker."""
    return (Path(folder) / MARKER).is_dir()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def quote(value: Any) -> str:
    """A name or path as it goes into a one-line message: quoted, with control characters
    (newlines, escape sequences) shown escaped so they can neither split the line nor drive the
    terminal."""
    return repr(str(value))


def one_line(text: str) -> str:
    """`text` with every control character escaped (a message printed on one terminal line)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def parse_json(text: str | bytes):
    """`json.loads` for files synthshot reads back: JSON nested too deeply for Python is a
    `json.JSONDecodeError` like any other bad JSON, never a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text if isinstance(text, str) else "", 0) from None


def load_safetensors(path: str | os.PathLike, remedy: str) -> dict:
    """The tensors of a safetensors file; a missing, damaged or foreign file (a pickle renamed, a
    truncated download) is a DataError naming it and saying `remedy`. Nothing is ever unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DataError(f"{quote(path)} does not exist: {remedy}") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{quote(path)} is not a valid safetensors file ({exc}): {remedy}") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record as one line, flushed to disk before returning.

    A kill can at worst leave a final line without its newline; `read_jsonl` reports it as corrupt
    and the caller redoes that record.
    """
    line = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        # A previous kill may have left a partial last line: start ours on a fresh line.
        if handle.tell() > 0:
            with open(path, "rb") as reader:
                reader.seek(-1, os.SEEK_END)
                if reader.read(1) != b"\n":
                    handle.write(b"\n")
        handle.write(line.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """Read a JSONL file; return the valid records and the 1-based numbers of corrupt lines."""
    records: list[dict] = []
    corrupt: list[int] = []
    path = Path(path)
    if not path.exists():
        return records, corrupt
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = parse_json(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                corrupt.append(number)
                continue
            if not isinstance(record, dict) or not raw.endswith(b"\n"):
                corrupt.append(number)
                continue
            records.append(record)
    return records, corrupt


_UNSAFE = re.compile(r"[^a-z0-9._-]+")


SLUG_MAX = 100  # characters; file names built from a slug stay far below the usual 255-byte limit


def slugify(name: str) -> str:
    """Turn a class name into a folder-safe slug: lower-case ASCII letters, digits, `.`, `_`, `-`.

    Separators (`/`, `\\`), `..`, control characters and anything else become `_`, so a slug can
    never point outside the folder it is joined to. A slug longer than `SLUG_MAX` keeps its start
    and ends with a hash of the whole name, so long names that share a start stay distinct.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"class name {name!r} is empty: give every class a non-empty name")
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("_", ascii_name.lower()).strip("._-")
    slug = re.sub(r"\.{2,}", "_", slug)
    if not slug:
        # Names with no ASCII letters at all (e.g. only CJK characters) still need a stable slug.
        slug = "class_" + name.encode("utf-8").hex()[:16]
    if len(slug) > SLUG_MAX:
        import hashlib

        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
        slug = slug[: SLUG_MAX - len(digest) - 1].rstrip("._-") + "-" + digest
    return slug


def unique_slugs(names: list[str]) -> dict[str, str]:
    """Map each class name to its slug; two names with the same slug are an error naming both."""
    seen: dict[str, str] = {}
    for name in names:
        slug = slugify(name)
        if slug in seen:
            raise DataError(
                f"classes {seen[slug]!r} and {name!r} both become the folder name {slug!r}: "
                "rename one of them"
            )
        seen[slug] = name
    return {name: slug for slug, name in seen.items()}


def json_digest(obj: Any) -> str:
    """sha256 (hex) of `obj` as JSON with sorted keys: a stable fingerprint of settings."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def relative_to_root(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to `root` (posix), or its absolute posix path when it is not under `root`.
    abspath, not resolve(): the names of symlinked files are kept."""
    absolute, base = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return absolute.as_posix()


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """Join `parts` under `root` and refuse any result that escapes `root`."""
    root_path = Path(root).resolve()
    target = root_path.joinpath(*parts).resolve()
    if target != root_path and root_path not in target.parents:
        raise DataError(f"path {'/'.join(parts)!r} would be written outside {root_path}: refused")
    return target
