"""Crash-safe file output: every file synthshot writes appears whole or not at all.

Writes go to a temporary file in the destination folder, are flushed to disk, then renamed over
the destination (an atomic step on POSIX and Windows). A kill at any moment therefore leaves
either the old file or the new one, plus at worst a stray `.tmp-*` file that readers ignore and
`remove_stale_temporaries` cleans up.
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

TEMP_PREFIX = ".tmp-"


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


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete `.tmp-*` files left in `folder` (recursively) by a killed writer; return how many."""
    removed = 0
    for tmp in Path(folder).rglob(f"{TEMP_PREFIX}*"):
        if tmp.is_file():
            tmp.unlink()
            removed += 1
    return removed


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
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                corrupt.append(number)
                continue
            if not isinstance(record, dict) or not raw.endswith(b"\n"):
                corrupt.append(number)
                continue
            records.append(record)
    return records, corrupt


_UNSAFE = re.compile(r"[^a-z0-9._-]+")


def slugify(name: str) -> str:
    """Turn a class name into a folder-safe slug: lower-case ASCII letters, digits, `.`, `_`, `-`.

    Separators (`/`, `\\`), `..`, control characters and anything else become `_`, so a slug can
    never point outside the folder it is joined to.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"class name {name!r} is empty: give every class a non-empty name")
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("_", ascii_name.lower()).strip("._-")
    slug = re.sub(r"\.{2,}", "_", slug)
    if not slug:
        # Names with no ASCII letters at all (e.g. only CJK characters) still need a stable slug.
        slug = "class_" + name.encode("utf-8").hex()[:16]
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
