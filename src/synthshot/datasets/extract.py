"""Safe extraction of tar and zip archives into a staging folder, following the registry's rules.

Every member is checked before anything is written: an absolute path, a ``..`` part, a link, a
device or a FIFO rejects the whole archive (``UnsafeArchiveError``), whether or not a rule would
have kept the member. Files are written by us (never by ``extractall``), so nothing lands outside
the destination. Archives inside archives are extracted through a temporary file, checked against
their own checksums when the registry gives them.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from synthshot.datasets.registry import ExtractRule
from synthshot.errors import DataError

CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")


class UnsafeArchiveError(DataError):
    """An archive member that could write outside the destination, or is not a plain file."""


def archive_stem(name: str) -> str:
    base = PurePosixPath(name).name
    for suffix in ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def safe_member_path(name: str, archive: str) -> PurePosixPath:
    """The member's path as a relative POSIX path; ``UnsafeArchiveError`` if it could escape."""
    text = name.replace("\\", "/")
    path = PurePosixPath(text)
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or ".." in path.parts:
        raise UnsafeArchiveError(
            f"archive {archive} holds the member {name!r}, which would be written outside the dataset "
            "folder: refused (the file is damaged or malicious; delete it and download it again)"
        )
    return PurePosixPath(*[p for p in path.parts if p not in ("", ".")])


def _skipped(path: PurePosixPath) -> bool:
    # macOS resource forks that some zips carry
    return bool(path.parts) and (path.parts[0] == "__MACOSX" or path.name.startswith("._"))


def target_for(path: PurePosixPath, rules: tuple[ExtractRule, ...], stem: str = "") -> tuple[ExtractRule, str] | None:
    """The first rule that keeps this member, with the member's path in the destination."""
    name = path.as_posix()
    for rule in rules:
        if rule.glob and not fnmatch.fnmatch(name, rule.glob):
            continue
        if name == rule.source:
            rest = PurePosixPath(name).name if rule.flatten or rule.to.endswith("/") or not rule.to else ""
        elif rule.source == "" or (rule.source.endswith("/") and name.startswith(rule.source)):
            rest = PurePosixPath(name).name if rule.flatten else name[len(rule.source):]
        else:
            continue
        return rule, rule.to.replace("{stem}", stem) + rest
    return None


class _Counting:
    """A read-only file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, handle: BinaryIO, bar):
        self.handle, self.bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.bar.update(len(data))
        return data


def _members(archive: Path, label: str, bar) -> Iterator[tuple[PurePosixPath, BinaryIO | None]]:
    """(safe path, readable stream or None for directories) for each member, checking each one."""
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    path = safe_member_path(info.filename, label)
                    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no file type
                    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise UnsafeArchiveError(
                            f"archive {label} holds {info.filename!r}, which is a link or special file: refused"
                        )
                    bar.update(info.compress_size)
                    if info.is_dir():
                        yield path, None
                        continue
                    with zf.open(info) as stream:
                        yield path, stream
            return
        with open(archive, "rb") as raw, tarfile.open(fileobj=_Counting(raw, bar), mode="r|*") as tar:
            for member in tar:
                path = safe_member_path(member.name, label)
                if member.isdir():
                    yield path, None
                    continue
                if not member.isfile():
                    kind = "link" if (member.issym() or member.islnk()) else "device or special file"
                    raise UnsafeArchiveError(f"archive {label} holds {member.name!r}, which is a {kind}: refused")
                yield path, tar.extractfile(member)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{label} is not a readable tar or zip archive ({exc}): delete it and download it again") from None


def extract(
    archive: Path,
    dest: Path,
    rules: tuple[ExtractRule, ...],
    *,
    label: str | None = None,
    stem: str = "",
    progress: bool = True,
) -> int:
    """Extract the members kept by ``rules`` from ``archive`` into ``dest``; return how many files.

    The archive is checked member by member as it streams; an unsafe one raises before it is
    written (the caller discards ``dest``, a staging folder, on any error).
    """
    from tqdm.auto import tqdm

    label = label or archive.name
    count = 0
    with tqdm(
        total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"extracting {label}", disable=None if progress else True, leave=False,
    ) as bar:
        for path, stream in _members(archive, label, bar):
            if stream is None or _skipped(path):
                continue
            found = target_for(path, rules, stem)
            if found is None:
                continue
            rule, relative = found
            if rule.nested is not None:
                count += _extract_nested(stream, path, dest, rule, label, progress)
                continue
            out_path = dest / safe_member_path(relative, label)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            with open(out_path, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
            count += 1
    return count


def _extract_nested(stream: BinaryIO, path: PurePosixPath, dest: Path, rule: ExtractRule, label: str, progress: bool) -> int:
    nested = rule.nested
    scratch = dest / ".nested"
    scratch.mkdir(parents=True, exist_ok=True)
    inner = scratch / path.name
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(inner, "wb") as out:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            out.write(chunk)
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    what = f"{path.as_posix()} inside {label}"
    if nested.size is not None and size != nested.size:
        raise DataError(f"{what}: size {size} bytes, expected {nested.size}")
    if nested.sha256 and sha.hexdigest() != nested.sha256:
        raise DataError(f"{what}: sha256 mismatch, expected {nested.sha256}, got {sha.hexdigest()}")
    if nested.md5 and md5.hexdigest() != nested.md5:
        raise DataError(f"{what}: md5 mismatch, expected {nested.md5}, got {md5.hexdigest()}")
    try:
        return extract(inner, dest, nested.rules, label=what, stem=archive_stem(path.name), progress=progress)
    finally:
        inner.unlink(missing_ok=True)
        if not any(scratch.iterdir()):
            scratch.rmdir()


def extract_all(archive: Path, dest: Path, progress: bool = True) -> int:
    """Extract every (safe) member: for user archives in unknown layouts, searched afterwards."""
    return extract(archive, dest, (ExtractRule(source="", to=""),), progress=progress)


def _is_zip(path: Path) -> bool:
    # the name decides first: an uncompressed tar whose last member is a zip looks like a zip
    name = path.name.lower()
    if name.endswith(".zip"):
        return True
    if name.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")):
        return False
    return zipfile.is_zipfile(path)


def is_archive(path: Path) -> bool:
    return path.is_file() and (zipfile.is_zipfile(path) or _is_tar(path))


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
