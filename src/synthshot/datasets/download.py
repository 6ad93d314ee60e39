"""Verified downloads: stream to ``<file>.part``, resume with HTTP Range, hash while streaming,
and rename to the final name only when the size and checksums match.

Every URL of a file (mirrors first, then the registry's) is tried in turn; a URL that answers
404, an HTML page (a login, quota or "virus scan" interstitial) or the wrong bytes is skipped, and
when none works the error lists what each one did. Mirrors need no trust: they are held to the
same checksums as the authors' URLs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from synthshot import __version__
from synthshot.datasets.registry import FileSpec
from synthshot.errors import DataError
from synthshot.io import quote

CHUNK = 1 << 20
USER_AGENT = f"synthshot/{__version__} (+https://github.com/synthshot; dataset preparation)"
_HTML_START = re.compile(rb"^\s*(<!doctype html|<html|<head|<body)", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ChecksumError(DataError):
    """A file whose bytes do not match the registry's size or checksums."""


@dataclass(frozen=True)
class Fetched:
    """A file on disk that passed its checks."""

    path: Path
    size: int
    sha256: str
    md5: str
    verified: str  # "sha256", "md5" (publisher's md5 only) or "unverified" (no checksum known)
    source: str  # the URL, "cache", or "user file"


@dataclass(frozen=True)
class HttpOptions:
    timeout: float = 60.0
    retries: int = 3  # attempts per URL after a dropped connection (each resumes where it stopped)
    backoff: float = 2.0  # seconds before the first retry, doubled each time
    user_agent: str = USER_AGENT
    progress: bool = True
    offline: bool | None = None  # never download; None: offline when $HF_HUB_OFFLINE is set (1/true/yes/on)

    @property
    def is_offline(self) -> bool:
        from synthshot.models.hub import is_offline

        return self.offline if self.offline is not None else is_offline()

    def offline_reason(self) -> str:
        return "--offline" if self.offline else "HF_HUB_OFFLINE is set"


def candidate_urls(spec: FileSpec, dataset: str, mirrors: list[str]) -> list[str]:
    """Mirrors (``<mirror>/<dataset>/<filename>``) first, then the registry's URLs."""
    urls = [f"{m.rstrip('/')}/{dataset}/{spec.filename}" for m in mirrors]
    return urls + [u for u in spec.urls if u not in urls]


def looks_like_html(head: bytes) -> bool:
    return bool(_HTML_START.match(head[:512]))


def hash_file(path: Path, progress: bool = False, label: str | None = None) -> tuple[str, str, int]:
    """(sha256, md5, size) of a file, read in 1 MiB chunks."""
    from tqdm.auto import tqdm

    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as handle, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"checking {label or path.name}", disable=None if progress else True, leave=False,
    ) as bar:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return sha.hexdigest(), md5.hexdigest(), size


def check_digests(spec: FileSpec, sha256: str, md5: str, size: int, what: str) -> str:
    """Compare with the registry; return how the file was verified, or raise ``ChecksumError``
    naming the expected and actual values."""
    if spec.size is not None and size != spec.size:
        raise ChecksumError(f"{what}: size {size} bytes, expected {spec.size} (sha256 {sha256})")
    if spec.sha256 and sha256 != spec.sha256:
        origin = f" ({spec.pinned_by})" if spec.pinned_by else ""
        raise ChecksumError(f"{what}: sha256 mismatch, expected {spec.sha256}{origin}, got {sha256}")
    if spec.md5 and md5 != spec.md5:
        raise ChecksumError(f"{what}: md5 mismatch, expected {spec.md5}, got {md5}")
    if spec.sha256 and spec.pinned_by:
        return "first-download sha256"
    return "sha256" if spec.sha256 else "md5" if spec.md5 else "unverified"


def verify_local(spec: FileSpec, path: Path, source: str, progress: bool = False) -> Fetched:
    """Hash a file already on disk (cache or the user's) and check it against the registry."""
    sha256, md5, size = hash_file(path, progress, spec.filename)
    verified = check_digests(spec, sha256, md5, size, f"{path} ({spec.filename})")
    return Fetched(path, size, sha256, md5, verified, source)


class _UrlFailed(Exception):
    """This URL cannot give the file; try the next one."""


def fetch(spec: FileSpec, dest_dir: Path, urls: list[str], options: HttpOptions = HttpOptions(), echo=print) -> Fetched:
    """Download ``spec`` into ``dest_dir/<filename>`` from the first URL that gives the right bytes.

    A ``<filename>.part`` left by an interrupted run is resumed. ``DataError`` when no URL works:
    nothing is left under the final name, and a partial file only where a later run can resume it.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / spec.filename
    part = dest_dir / (spec.filename + ".part")
    if not urls:
        raise DataError(f"{spec.filename} has no download URL: pass your copy with --from-archive")
    if options.is_offline:
        raise DataError(
            f"offline ({options.offline_reason()}): {quote(spec.filename)} is not downloaded; put your copy at "
            f"{quote(final)} or pass it with --from-archive"
        )
    failures = []
    for url in urls:
        try:
            return _fetch_url(url, spec, part, final, options, echo)
        except _UrlFailed as exc:
            failures.append(f"{url}: {exc}")
            echo(f"  {spec.filename}: {url} failed ({exc})")
    raise DataError(
        f"could not download {spec.filename}; tried {len(urls)} URL(s): " + "; ".join(failures)
        + ". Check the network, pass --mirror URL, or download the file yourself and pass it with --from-archive"
    )


def _fetch_url(url: str, spec: FileSpec, part: Path, final: Path, options: HttpOptions, echo) -> Fetched:
    from tqdm.auto import tqdm

    opener = urllib.request.build_opener()  # follows 301/302/303/307/308, keeping the Range header
    delay = options.backoff
    for attempt in range(options.retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": options.user_agent, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = opener.open(urllib.request.Request(url, headers=headers), timeout=options.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the partial file may already be whole
                exc.close()
                return _finish(part, final, spec, url, offset)
            exc.close()
            if exc.code >= 500 and attempt < options.retries:
                time.sleep(delay)
                delay *= 2
                continue
            raise _UrlFailed(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if attempt < options.retries:
                time.sleep(delay)
                delay *= 2
                continue
            raise _UrlFailed(f"no connection ({getattr(exc, 'reason', exc)})") from None

        with response:
            kind = response.headers.get("Content-Type", "")
            if "text/html" in kind.lower() and not spec.filename.endswith((".html", ".htm")):
                raise _UrlFailed(_html_message())
            resumed = offset > 0 and response.status == 206
            if resumed:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != offset:
                    resumed = False
            if not resumed:
                offset = 0  # the server ignored the Range header: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            if spec.size is not None and total is not None and total != spec.size:
                raise _UrlFailed(f"the server offers {total} bytes, expected {spec.size}")

            sha, md5 = hashlib.sha256(), hashlib.md5()
            if offset:
                with open(part, "rb") as old:
                    for chunk in iter(lambda: old.read(CHUNK), b""):
                        sha.update(chunk)
                        md5.update(chunk)
                echo(f"  {spec.filename}: resuming at byte {offset}")
            written = offset
            try:
                with open(part, "ab" if offset else "wb") as out, tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=spec.filename, disable=None if options.progress else True, leave=False,
                ) as bar:
                    first = offset == 0
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        if first:
                            first = False
                            if looks_like_html(chunk) and not spec.filename.endswith((".html", ".htm")):
                                out.close()
                                part.unlink()
                                raise _UrlFailed(_html_message())
                        out.write(chunk)
                        sha.update(chunk)
                        md5.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                # keep what arrived; the next attempt resumes from it
                if attempt < options.retries:
                    echo(f"  {spec.filename}: connection dropped after {written} bytes ({type(exc).__name__}); retrying")
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise _UrlFailed(f"connection dropped after {written} bytes") from None
            if total is not None and written < total:
                if attempt < options.retries:
                    echo(f"  {spec.filename}: got {written} of {total} bytes; resuming")
                    continue
                raise _UrlFailed(f"got {written} of {total} bytes")
            try:
                return _verify_part(part, final, spec, url, sha.hexdigest(), md5.hexdigest(), written)
            except _UrlFailed:
                if not resumed or attempt >= options.retries:
                    raise
                # the partial file may come from another version of the file: start over once
                echo(f"  {spec.filename}: the resumed file fails its check; downloading it from the start")
    raise _UrlFailed("gave up after retries")


def _html_message() -> str:
    return (
        "the server answered with an HTML page instead of the file (a login, quota or 'virus scan' "
        "interstitial); open the URL in a browser, download the file and pass it with --from-archive"
    )


def _verify_part(part: Path, final: Path, spec: FileSpec, url: str, sha256: str, md5: str, size: int) -> Fetched:
    try:
        verified = check_digests(spec, sha256, md5, size, f"{spec.filename} from {url}")
    except ChecksumError as exc:
        part.unlink(missing_ok=True)  # wrong bytes are not worth resuming
        raise _UrlFailed(str(exc).split(": ", 1)[1]) from None
    os.replace(part, final)
    return Fetched(final, size, sha256, md5, verified, url)


def _finish(part: Path, final: Path, spec: FileSpec, url: str, size: int) -> Fetched:
    sha256, md5, size = hash_file(part)
    return _verify_part(part, final, spec, url, sha256, md5, size)


# -- what synthshot downloaded ------------------------------------------------------------------

RECORD_NAME = ".synthshot-downloads.json"


class DownloadRecord:
    """``<cache>/.synthshot-downloads.json``: each file synthshot downloaded into this folder, with
    the sha256 it had.

    It says which cached files are synthshot's (only those are deleted when they fail their check;
    anything else in the cache is the user's and left alone), and it pins the files the registry
    has no sha256 for on their first download (trust on first use): a later download that differs
    is refused. Deleting the record (or the file's entry) accepts a new version.
    """

    def __init__(self, folder: Path):
        self.path = folder / RECORD_NAME
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = None
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise DataError(
                    f"{quote(self.path)} is damaged: delete it (synthshot then treats the cached files as yours and "
                    "re-pins unpinned files on their next download) and run again"
                )
            self.entries = data

    def downloaded(self, filename: str) -> bool:
        return filename in self.entries

    def pin(self, spec: FileSpec) -> FileSpec:
        """``spec`` with the sha256 of its first download when the registry pins none."""
        entry = self.entries.get(spec.filename)
        if spec.sha256 or not entry or not isinstance(entry.get("sha256"), str):
            return spec
        return dataclasses.replace(
            spec, sha256=entry["sha256"],
            pinned_by=f"recorded at its first download, {entry.get('first_downloaded', '?')}, in {quote(self.path)}; "
                      "delete that record to accept a new version",
        )

    def add(self, spec: FileSpec, got: Fetched) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        old = self.entries.get(spec.filename, {})
        self.entries[spec.filename] = {
            "sha256": got.sha256,
            "size": got.size,
            "source": got.source,
            "verified": got.verified,
            "first_downloaded": old.get("first_downloaded", now) if old.get("sha256") == got.sha256 else now,
            "downloaded": now,
        }
        from synthshot.io import atomic_write_json

        atomic_write_json(self.path, self.entries)
