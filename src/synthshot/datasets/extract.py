"""Safe extraction of tar and zip archives into a staging folder, following the registry's rules.

Every member is checked before anything is written: an absolute path, a ``..`` part, a link, a
device or a FIFO rejects the whole archive (``UnsafeArchiveError``), whether or not a rule would
have kept the member. Files are written by us (never by ``extractall``), so nothing lands outside
the destination. Archives inside archives are extracted through a temporary file, checked against
their own checksums when the registry gives them.

Archive bombs are capped (``ArchiveTooLargeError``): the bytes one archive may write (its nested
archives and their contents included) and the members it may hold. The byte cap is, by default,
``max(MIN_CAP_BYTES, CAP_RATIO x the archive's size)``: 1 GB for small files, and ten times the
archive for large ones (the benchmarks are JPEGs in tars that barely compress: ImageNet's 148 GB
train tar writes about 2 x 148 GB here, its 1000 inner tars and their images). ``--max-extract-gb``
or $SYNTHSHOT_MAX_EXTRACT_BYTES sets it instead. A member's declared size is checked before it is
written and the bytes actually written are counted as they stream (headers can lie). A member
that cannot be written (a name too long for the file system, a file where a folder must go, a bad
CRC, a truncated stream) is a one-line ``DataError`` naming the archive and the member.
"""

from __future__ import annotations

import errno
import fnmatch
import gzip
import hashlib
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from synthshot.datasets.registry import ExtractRule, human_size
from synthshot.errors import ConfigError, DataError
from synthshot.io import quote

CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip")
MAX_BYTES_ENV = "SYNTHSHOT_MAX_EXTRACT_BYTES"
MIN_CAP_BYTES = 10**9  # the default byte cap of a small archive
CAP_RATIO = 10  # the default byte cap of a large one: this many times its size
MAX_FILES = 5_000_000  # members per archive, nested ones included (ImageNet train: 1.28 million)
_CANNOT_WRITE = {getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EACCES", "EROFS", "EPERM") if hasattr(errno, n)}
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError,
                OSError, RuntimeError, NotImplementedError)  # zipfile: encrypted or unknown compression


class UnsafeArchiveError(DataError):
    """An archive member that could write outside the destination, or is not a plain file."""


class ArchiveTooLargeError(DataError):
    """An archive that would write more bytes or files than the cap allows (a possible archive bomb)."""


def max_bytes_from_env() -> int | None:
    """$SYNTHSHOT_MAX_EXTRACT_BYTES as a number of bytes, or None when it is not set."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(float(text))  # "300000000000" or "3e11"
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise ConfigError(
            f"{MAX_BYTES_ENV}={quote(text)} is not a positive number of bytes: set it to e.g. 300000000000 (300 GB) or unset it"
        )
    return value


class _Budget:
    """What one top-level archive may still write: bytes and members, nested archives included."""

    def __init__(self, archive: Path, max_bytes: int | None, max_files: int | None):
        size = archive.stat().st_size
        self.explicit = max_bytes is not None
        self.max_bytes = max_bytes if max_bytes is not None else max(MIN_CAP_BYTES, CAP_RATIO * size)
        self.max_files = max_files if max_files is not None else MAX_FILES
        self.written = 0
        self.members = 0

    def member(self, name: str, label: str) -> None:
        self.members += 1
        if self.members > self.max_files:
            raise ArchiveTooLargeError(
                f"archive {quote(label)} holds more than {self.max_files} members (at {quote(name)}): refused as a "
                "possible archive bomb; if it is genuine, extract it yourself and pass the folder with --from-archive"
            )

    def declare(self, name: str, size: int | None, label: str) -> None:
        if size is not None and size > 0 and self.written + size > self.max_bytes:
            raise self._over(name, label)

    def add(self, name: str, size: int, label: str) -> None:
        self.written += size
        if self.written > self.max_bytes:
            raise self._over(name, label)

    def _over(self, name: str, label: str) -> ArchiveTooLargeError:
        how = ("the cap you set" if self.explicit
               else f"the default cap, max({human_size(MIN_CAP_BYTES)}, {CAP_RATIO} x the archive's size)")
        return ArchiveTooLargeError(
            f"archive {quote(label)} would write more than {human_size(self.max_bytes)} ({self.max_bytes} bytes, "
            f"{how}) at member {quote(name)}: refused as a possible archive bomb; if the archive is genuine, raise "
            f"the cap with --max-extract-gb N or {MAX_BYTES_ENV}=BYTES"
        )


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
            f"archive {quote(archive)} holds the member {quote(name)}, which would be written outside the dataset "
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


def _members(archive: Path, label: str, bar, budget: _Budget) -> Iterator[tuple[PurePosixPath, BinaryIO | None]]:
    """(safe path, readable stream or None for directories) for each member, checking each one."""
    name = None
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = info.filename
                    budget.member(name, label)
                    path = safe_member_path(info.filename, label)
                    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no file type
                    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise UnsafeArchiveError(
                            f"archive {quote(label)} holds {quote(info.filename)}, which is a link or special file: refused"
                        )
                    bar.update(info.compress_size)
                    if info.is_dir():
                        yield path, None
                        continue
                    with zf.open(info) as stream:
                        yield path, _Sized(stream, info.file_size)
                    name = None  # an error from here on is not this member's
            return
        with open(archive, "rb") as raw, tarfile.open(fileobj=_Counting(raw, bar), mode="r|*") as tar:
            for member in tar:
                name = member.name
                budget.member(name, label)
                path = safe_member_path(member.name, label)
                if member.isdir():
                    yield path, None
                    continue
                if not member.isfile():
                    kind = "link" if (member.issym() or member.islnk()) else "device or special file"
                    raise UnsafeArchiveError(f"archive {quote(label)} holds {quote(member.name)}, which is a {kind}: refused")
                yield path, _Sized(tar.extractfile(member), member.size)
                name = None
    except _READ_ERRORS as exc:
        raise _unreadable(label, name, exc) from None


def _unreadable(label: str, member: str | None, exc: BaseException) -> DataError:
    at = f" at member {quote(member)}" if member is not None else ""
    why = quote(getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
    return DataError(
        f"archive {quote(label)} is damaged or not a readable tar or zip archive{at} ({why}): delete it and "
        "download it again"
    )


class _Sized:
    """A member's stream with the size its header declares (checked against the cap before it is
    written; the bytes actually read are counted too)."""

    def __init__(self, stream: BinaryIO, size: int | None):
        self.stream, self.size = stream, size

    def read(self, n: int = -1) -> bytes:
        return self.stream.read(n)


class _Hashing(_Sized):
    """A member's stream that hashes what is read from it (nested archives)."""

    def __init__(self, inner: _Sized):
        super().__init__(inner.stream, inner.size)
        self.sha256, self.md5 = hashlib.sha256(), hashlib.md5()

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.sha256.update(data)
        self.md5.update(data)
        return data


def _check_target(out_path: Path, dest: Path, member: str, label: str) -> None:
    """Refuse a member whose file would stand where a folder is, or under a file."""
    if out_path.is_dir() and not out_path.is_symlink():
        raise DataError(
            f"archive {quote(label)} holds {quote(member)} both as a file and as a folder: refused (the archive is damaged "
            "or malicious; delete it and download it again)"
        )
    for parent in out_path.relative_to(dest).parents:
        if parent != Path(".") and (dest / parent).exists() and not (dest / parent).is_dir():
            raise DataError(
                f"archive {quote(label)} holds {quote(member)} inside {quote(parent.as_posix())}, which it also holds as a file: "
                "refused (the archive is damaged or malicious; delete it and download it again)"
            )


def _remove_part(path: Path) -> None:
    """Remove the partial file a failed write left (in the staging folder synthshot owns)."""
    try:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    except OSError:
        pass


def _write_member(stream: _Sized, out_path: Path, dest: Path, member: str, label: str, budget: _Budget) -> None:
    """Write one member's bytes, counting them against the budget; one-line errors naming it."""
    budget.declare(member, stream.size, label)
    try:
        _check_target(out_path, dest, member, label)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "wb") as out:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                budget.add(member, len(chunk), label)
                out.write(chunk)
    except (OSError, DataError) as exc:
        _remove_part(out_path)
        if isinstance(exc, DataError):
            raise
        if isinstance(exc, (FileExistsError, NotADirectoryError, IsADirectoryError)):
            raise DataError(
                f"archive {quote(label)} holds {quote(member)} where a file and a folder of the same name meet: refused "
                "(the archive is damaged or malicious; delete it and download it again)"
            ) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise DataError(
                f"archive {quote(label)} holds {quote(member)}, a name too long for this file system: refused (extract it "
                "yourself with shorter names and pass the folder with --from-archive)"
            ) from None
        if exc.errno in _CANNOT_WRITE:
            raise DataError(f"cannot write {quote(out_path)} from archive {quote(label)} ({exc.strerror}): free some space, "
                            "fix the permissions or choose another --root") from None
        raise _unreadable(label, member, exc) from None
    except _READ_ERRORS as exc:  # a bad CRC, a truncated stream: raised while reading the member
        _remove_part(out_path)
        raise _unreadable(label, member, exc) from None


def extract(
    archive: Path,
    dest: Path,
    rules: tuple[ExtractRule, ...],
    *,
    label: str | None = None,
    stem: str = "",
    progress: bool = True,
    max_bytes: int | None = None,
    max_files: int | None = None,
    _budget: _Budget | None = None,
) -> int:
    """Extract the members kept by ``rules`` from ``archive`` into ``dest``; return how many files.

    The archive is checked member by member as it streams; an unsafe one raises before it is
    written (the caller discards ``dest``, a staging folder, on any error). ``max_bytes`` caps
    the bytes written (default: see the module docstring) and ``max_files`` the members read.
    """
    from tqdm.auto import tqdm

    label = label or archive.name
    budget = _budget or _Budget(archive, max_bytes, max_files)
    count = 0
    with tqdm(
        total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"extracting {label}", disable=None if progress else True, leave=False,
    ) as bar:
        for path, stream in _members(archive, label, bar, budget):
            if stream is None or _skipped(path):
                continue
            found = target_for(path, rules, stem)
            if found is None:
                continue
            rule, relative = found
            if rule.nested is not None:
                count += _extract_nested(stream, path, dest, rule, label, progress, budget)
                continue
            _write_member(stream, dest / safe_member_path(relative, label), dest, path.as_posix(), label, budget)
            count += 1
    return count


def _extract_nested(stream: _Sized, path: PurePosixPath, dest: Path, rule: ExtractRule, label: str, progress: bool,
                    budget: _Budget) -> int:
    nested = rule.nested
    scratch = dest / ".nested"
    scratch.mkdir(parents=True, exist_ok=True)
    inner = scratch / path.name
    hashing = _Hashing(stream)
    _write_member(hashing, inner, scratch, path.as_posix(), label, budget)
    size = inner.stat().st_size
    sha, md5 = hashing.sha256, hashing.md5
    what = f"{path.as_posix()} inside {label}"
    try:
        if nested.size is not None and size != nested.size:
            raise DataError(f"{what}: size {size} bytes, expected {nested.size}")
        if nested.sha256 and sha.hexdigest() != nested.sha256:
            raise DataError(f"{what}: sha256 mismatch, expected {nested.sha256}, got {sha.hexdigest()}")
        if nested.md5 and md5.hexdigest() != nested.md5:
            raise DataError(f"{what}: md5 mismatch, expected {nested.md5}, got {md5.hexdigest()}")
        return extract(inner, dest, nested.rules, label=what, stem=archive_stem(path.name), progress=progress,
                       _budget=budget)
    finally:
        inner.unlink(missing_ok=True)
        if not any(scratch.iterdir()):
            scratch.rmdir()


def extract_all(archive: Path, dest: Path, progress: bool = True, max_bytes: int | None = None) -> int:
    """Extract every (safe) member: for user archives in unknown layouts, searched afterwards."""
    return extract(archive, dest, (ExtractRule(source="", to=""),), progress=progress, max_bytes=max_bytes)


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
