"""``synthshot datasets prepare``: from nothing (or the user's archives) to a checked dataset folder.

1. plan: the registry entry, the protocol, the files, their sizes and checksum status, the terms.
   A dataset already prepared for the protocol stops here (no request, nothing rewritten); a
   manual dataset without its files stops with the steps to get them (exit code 2).
2. fetch: each file is verified from the cache, taken from ``--from-archive`` or downloaded
   (resumable, hashed while streaming; see :mod:`synthshot.datasets.download`).
3. build: archives are extracted into ``ROOT/.<dir>.staging`` (safe members only, the bytes and
   members each archive may write capped: see :mod:`synthshot.datasets.extract`), re-packaged
   user copies are located, plain files placed, the tree fixed up and the peers' files generated.
4. split: the protocol's split is read, checked (every path on disk, labels, names, counts) and
   written with ``classnames.json``, ``templates.json`` and ``manifest.json`` in ``synthshot/``.
5. the staging folder is renamed to ``ROOT/<dir>``: a failed run leaves no half-built tree.
6. ``--imagefolder``: label-ordered ImageFolder views of the split.

Offline (``--offline`` or $HF_HUB_OFFLINE) nothing is downloaded: a file that is neither in
``ROOT/.cache/<name>`` nor passed with ``--from-archive`` is a one-line error naming it and where
to put it. synthshot deletes or replaces only what it wrote: a staging folder carries its marker
file, scratch folders its ``.synthshot-`` prefix, and a cached file that fails its check is
downloaded again only when ``.synthshot-downloads.json`` says synthshot downloaded it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from synthshot import __version__
from synthshot.data.coop import save_coop_split
from synthshot.data.registry import DatasetInfo, get_dataset
from synthshot.datasets.download import (
    ChecksumError,
    DownloadRecord,
    Fetched,
    HttpOptions,
    candidate_urls,
    fetch,
    verify_local,
)
from synthshot.datasets.extract import archive_stem, extract, extract_all, is_archive, max_bytes_from_env
from synthshot.datasets.imagefolder import MODES, materialise
from synthshot.datasets.layouts import (
    GENERATORS,
    POSTPROCESS,
    MissingImagesError,
    SplitContext,
    check_split,
    read_split,
)
from synthshot.datasets.registry import (
    DatasetSource,
    FileSpec,
    Locate,
    human_size,
    load_source,
    mirrors_from_env,
)
from synthshot.errors import DataError
from synthshot.io import atomic_write_json, atomic_write_text, quote

MANIFEST_FORMAT = 1
STAGING_MARKER = ".synthshot-staging"  # in ROOT/.<dir>.staging and .adding: the folder is synthshot's
SCRATCH_PREFIX = ".synthshot-unpack-"  # user archives are unpacked in ROOT/.cache/<name>/<prefix>*


class ManualDownloadRequired(DataError):
    """A dataset whose files the user must get by hand; the message holds the steps."""


@dataclass
class PrepareResult:
    dataset: str
    protocol: str
    folder: Path  # ROOT/<dir>: the image root of the split's paths
    split_file: Path  # ROOT/<dir>/synthshot/split_<protocol>.json
    status: str  # "prepared", "protocol added", "already prepared", "imagefolder added" or "dry run"
    counts: dict[str, int] = field(default_factory=dict)
    imagefolder: Path | None = None


# -- where things are ---------------------------------------------------------------------------


def dataset_folder(root: str | Path, name: str, registry_dir: str | Path | None = None) -> Path:
    """``ROOT/<dir>`` of a dataset (``food101`` -> ``ROOT/food-101``), prepared or not."""
    return Path(root).expanduser().absolute() / load_source(name, registry_dir).dir


def dataset_split_file(root: str | Path, name: str, protocol: str | None = None,
                       registry_dir: str | Path | None = None) -> Path:
    """The split file ``prepare`` wrote (CoOp triples, paths relative to ``dataset_folder``);
    ``DataError`` saying which command to run when it is not there. ``protocol`` defaults to the
    dataset's default (``coop``; ``official`` for CUB)."""
    source = load_source(name, registry_dir)
    key = source.protocol(protocol).name
    path = dataset_folder(root, name, registry_dir) / "synthshot" / f"split_{key}.json"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: run `synthshot datasets prepare {source.name} --root {root} --protocol {key}`"
        )
    return path


def read_manifest(folder: Path) -> dict | None:
    path = folder / "synthshot" / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path} is damaged: delete {folder} and run prepare again") from None


# -- 1. plan ------------------------------------------------------------------------------------


def describe_plan(source: DatasetSource, protocol: str, files: list[FileSpec], folder: Path, mirrors: list[str]) -> list[str]:
    proto = source.protocols[protocol]
    lines = [
        f"{source.name}: {source.title}, protocol {protocol} -> {folder}",
        f"  split: {proto.origin}",
        f"  terms: {source.terms.summary} ({source.terms.url}; redistribution: {source.terms.redistribution})",
        f"  mode: {'automatic download' if source.mode == 'auto' else 'manual (your own copy, --from-archive)'}",
        "  files:",
    ]
    for spec in files:
        size = human_size(spec.size) if spec.size else "size ?"
        urls = candidate_urls(spec, source.name, mirrors)
        where = urls[0] if urls else "no URL: --from-archive"
        status = spec.checksum_status()
        note = f" ({spec.checksums})" if not spec.sha256 else ""
        lines.append(f"    {spec.filename}  {size}  {status}{note}  {where}")
    if source.note:
        lines.append(f"  note: {source.note}")
    return lines


def manual_instructions(source: DatasetSource, missing: list[FileSpec]) -> ManualDownloadRequired:
    steps = "\n".join(f"  {i}. {step}" for i, step in enumerate(source.instructions, 1))
    names = ", ".join(f.filename for f in missing)
    return ManualDownloadRequired(
        f"{source.title} cannot be downloaded automatically ({source.terms.summary}). "
        f"Missing: {names}. To prepare it:\n{steps}"
    )


# -- 2. fetch -----------------------------------------------------------------------------------


def _match_user_paths(paths: list[Path], specs: list[FileSpec]) -> tuple[dict[str, Path], list[Path]]:
    """User paths named like a registry file (case-insensitive) -> that file; the rest."""
    by_name = {s.filename.lower(): s for s in specs}
    matched, rest = {}, []
    for path in paths:
        if not path.exists():
            raise DataError(f"--from-archive {path} does not exist")
        spec = by_name.get(path.name.lower())
        if spec is not None and path.is_file():
            matched[spec.id] = path
        else:
            rest.append(path)
    return matched, rest


def _echo_fetched(echo, spec: FileSpec, got: Fetched, record: DownloadRecord) -> None:
    if got.verified == "unverified":
        kept = (f"; pinned by this first download in {quote(record.path)}: later downloads must match it"
                if "://" in got.source else "")
        echo(f"  {spec.filename}: UNVERIFIED, no checksum is pinned for it ({spec.checksums}); "
             f"its sha256 is {got.sha256}{kept}")
    else:
        echo(f"  {spec.filename}: {got.verified} verified ({human_size(got.size)}, from {got.source})")


def _obtain(spec: FileSpec, source: DatasetSource, cache: Path, user: dict[str, Path], mirrors: list[str],
            http: HttpOptions, echo, record: DownloadRecord) -> Fetched:
    spec = record.pin(spec)  # an unpinned file is held to the sha256 of its first download
    if spec.id in user:
        return verify_local(spec, user[spec.id], f"user file {user[spec.id]}", http.progress)
    cached = cache / spec.filename
    if (cached.exists() or cached.is_symlink()) and not cached.is_file():
        raise DataError(f"{quote(cached)} is in the way of the download of {quote(spec.filename)} and is not a file: move it "
                        "aside and run again")
    if cached.is_file():
        try:
            return verify_local(spec, cached, "cache", http.progress)
        except ChecksumError as exc:
            if not record.downloaded(spec.filename):
                raise DataError(
                    f"{quote(cached)} fails its check ({exc}); synthshot did not download it, so it is left alone: "
                    "replace it with a good copy or delete it, and run again"
                ) from None
            if http.is_offline:
                raise DataError(
                    f"{quote(cached)} fails its check ({exc}) and, offline ({http.offline_reason()}), it is not downloaded "
                    f"again: put a good copy at {quote(cached)}"
                ) from None
            echo(f"  {spec.filename}: the cached copy fails its check ({exc}); downloading it again")
            cached.unlink()
    got = fetch(spec, cache, candidate_urls(spec, source.name, mirrors), http, echo)
    record.add(spec, got)
    return got


def _fresh_staging(staging: Path) -> None:
    """Create ``staging`` with synthshot's marker; a stale one is replaced only if it has the marker."""
    if staging.exists() or staging.is_symlink():
        if staging.is_dir() and not staging.is_symlink() and (staging / STAGING_MARKER).is_file():
            shutil.rmtree(staging)  # left by a run that was killed
        else:
            raise DataError(
                f"{quote(staging)} is in the way and synthshot did not make it (it has no {STAGING_MARKER} file), so it "
                "is left alone: move it aside and run prepare again"
            )
    staging.mkdir(parents=True)
    (staging / STAGING_MARKER).write_text(
        "synthshot datasets prepare builds the dataset here; it deletes this folder when it ends\n", encoding="utf-8"
    )


def _check_space(root: Path, downloads: list[FileSpec], echo) -> None:
    """Refuse to start a download that cannot fit; warn when the extracted tree may not."""
    need = sum(f.size or 0 for f in downloads)
    if not need:
        return
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise DataError(
            f"the downloads need {human_size(need)} but {probe} has {human_size(free)} free: "
            "free some space or choose another --root"
        )
    if free < 2 * need:
        echo(f"warning: {human_size(free)} free in {probe}; the downloads and the extracted tree need about "
             f"{human_size(2 * need)}")


# -- 3. build -----------------------------------------------------------------------------------


def _find_located(roots: list[Path], loc: Locate) -> list[Path]:
    found = []
    for root in roots:
        if loc.file:
            if root.is_file() and fnmatch.fnmatch(root.name, loc.file):
                found.append(root)
                continue
            for dirpath, _, filenames in os.walk(root):
                found += [Path(dirpath) / f for f in filenames if fnmatch.fnmatch(f, loc.file)]
            continue
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath).name.lower() == str(loc.name).lower() and any(
                fnmatch.fnmatch(child, loc.contains or "*") for child in dirnames + filenames
            ):
                found.append(Path(dirpath))
                dirnames[:] = []  # do not descend into the images
    return found


def _locate(paths: list[Path], source: DatasetSource, needed: list[FileSpec], tree: Path, scratch: Path,
            progress: bool, echo, max_bytes: int | None = None) -> tuple[set[str], dict[str, str]]:
    """Find the folders/files of re-packaged copies and put them in the tree.

    Archives are unpacked (safely) into ``scratch`` (a folder this run made) and the found folders moved in; folders the
    user passed are linked, never moved or copied. Returns the ids of the registry files this
    stands in for, and {tree path: where it came from}.
    """
    roots: list[tuple[Path, bool]] = []  # (where to search, unpacked by us)
    for i, path in enumerate(paths):
        if path.is_file() and is_archive(path):
            unpack = scratch / f"{i}-{archive_stem(path.name)}"
            echo(f"  unpacking {path} to look for the dataset's folders")
            extract_all(path, unpack, progress, max_bytes)
            roots.append((unpack, True))
        else:
            roots.append((path, False))
    needed_ids = {f.id for f in needed}
    replaced: set[str] = set()
    origins: dict[str, str] = {}
    for loc in source.locate:
        if not needed_ids & set(loc.replaces):
            continue
        found = [(f, ours) for root, ours in roots for f in _find_located([root], loc)]
        if not found:
            continue
        if len(found) > 1:
            listed = ", ".join(str(f) for f, _ in found[:5])
            raise DataError(
                f"found {len(found)} candidates for {loc.to} in the --from-archive inputs ({listed}): "
                "pass only the copy you want to use"
            )
        src, ours = found[0]
        dest = tree / loc.to
        dest.parent.mkdir(parents=True, exist_ok=True)
        if ours:
            shutil.move(str(src), dest)
        else:
            os.symlink(src.absolute(), dest)
        echo(f"  {loc.to}: found at {src}" + ("" if ours else " (linked)"))
        replaced.update(loc.replaces)
        origins[loc.to] = str(src)
    return replaced, origins


def _place(spec: FileSpec, got: Fetched, tree: Path) -> None:
    target = tree / spec.place
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.copyfile(got.path, tmp)
    os.replace(tmp, target)


def _merge_into(staged: Path, tree: Path) -> None:
    """Move every file under ``staged`` to the same place under ``tree`` (replacing)."""
    for dirpath, dirnames, filenames in os.walk(staged):
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if d not in links]
        for f in filenames + links:
            src = Path(dirpath) / f
            rel = src.relative_to(staged)
            if rel == Path(STAGING_MARKER):
                continue
            dest = tree / rel
            for parent in list(rel.parents)[:-1]:  # never write through a link to the user's folders
                if (tree / parent).is_symlink():
                    raise DataError(f"{tree / parent} is a link to your own copy; not adding {rel} into it")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)


# -- 4. the synthshot/ folder -------------------------------------------------------------------


def write_metadata(tree: Path, source: DatasetSource, info: DatasetInfo, protocol: str, split: dict,
                   counts: dict[str, int], files: dict, generated: list[str], manifest: dict | None) -> dict:
    meta = tree / "synthshot"
    meta.mkdir(parents=True, exist_ok=True)
    split_path = meta / f"split_{protocol}.json"
    save_coop_split(split_path, split)
    atomic_write_json(
        meta / "classnames.json", [{"label": c.label, "name": c.name, "folder": c.official} for c in info.classes]
    )
    atomic_write_json(
        meta / "templates.json",
        {
            "dataset": info.name,
            "template": info.template,
            "zeroshot_templates": list(info.zeroshot_templates),
            "sources": {k: v for k, v in info.sources.items() if "template" in k},
        },
    )
    from synthshot.datasets.download import hash_file

    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = dict(manifest or {})
    manifest.update(
        {
            "format": MANIFEST_FORMAT,
            "dataset": source.name,
            "title": source.title,
            "folder": source.dir,
            "synthshot_version": __version__,
            "registry": {"entry": source.origin, "sha256": source.fingerprint},
            "terms": {"url": source.terms.url, "summary": source.terms.summary,
                      "redistribution": source.terms.redistribution},
            "licence_note": (
                f"{source.terms.summary} Terms: {source.terms.url}. synthshot fetched these files from the "
                "sources listed below and does not re-host them; check the terms before sharing the folder."
            ),
        }
    )
    manifest.setdefault("files", {}).update(files)
    manifest["generated"] = sorted(set(manifest.get("generated", [])) | set(generated))
    manifest.setdefault("protocols", {})[protocol] = {
        "split_file": f"synthshot/split_{protocol}.json",
        "sha256": hash_file(split_path)[0],
        "counts": counts,
        "classes": len({row[1] for row in split["train"]}),
        "origin": source.protocols[protocol].origin,
        "prepared": now,
        "imagefolder": None,
    }
    atomic_write_json(meta / "manifest.json", manifest)
    atomic_write_text(meta / "README.txt", _readme(source, manifest))
    return manifest


def _readme(source: DatasetSource, manifest: dict) -> str:
    lines = [
        f"{source.title}, prepared by synthshot {__version__} (`synthshot datasets prepare {source.name}`).",
        "",
        "split_<protocol>.json: {\"train\"|\"val\"|\"test\": [[path, label, class name], ...]}, paths relative to",
        "the folder above this one; classnames.json: label -> name (prompt name) and folder (the dataset's own id);",
        "templates.json: prompt templates; manifest.json: sources, checksums, counts and terms.",
        "",
        f"Terms of use: {source.terms.summary} ({source.terms.url})",
    ]
    return "\n".join(lines) + "\n"


def _file_record(spec: FileSpec, got: Fetched | None, origin: str | None = None) -> dict:
    if got is None:
        return {"id": spec.id, "source": origin, "verified": "user copy (re-packaged): checked through the split"}
    return {
        "id": spec.id,
        "source": got.source,
        "size": got.size,
        "sha256": got.sha256,
        "md5": got.md5,
        "verified": got.verified,
        "placed": spec.place,
        "checksums": spec.checksums,
    }


# -- the command --------------------------------------------------------------------------------


def prepare_dataset(
    name: str,
    root: str | Path,
    *,
    protocol: str | None = None,
    from_archives: list[str | Path] | tuple = (),
    mirrors: list[str] | None = None,
    imagefolder: str = "none",
    dry_run: bool = False,
    registry_dir: str | Path | None = None,
    http: HttpOptions | None = None,
    max_extract_bytes: int | None = None,
    echo=print,
) -> PrepareResult:
    """Prepare one benchmark under ``root`` (see the module docstring for the steps).

    ``max_extract_bytes`` caps what each archive may write (default: $SYNTHSHOT_MAX_EXTRACT_BYTES,
    else max(1 GB, 10 x the archive's size)); ``http.offline`` (default: $HF_HUB_OFFLINE) forbids
    downloads."""
    if imagefolder not in MODES:
        raise DataError(f"--imagefolder {imagefolder!r} is not one of {', '.join(MODES)}")
    http = http or HttpOptions()
    if max_extract_bytes is None:
        max_extract_bytes = max_bytes_from_env()
    elif max_extract_bytes <= 0:
        raise DataError(f"max_extract_bytes must be a positive number of bytes, not {max_extract_bytes}")
    source = load_source(name, registry_dir)
    proto = source.protocol(protocol).name
    info = get_dataset(source.name)
    root = Path(root).expanduser().absolute()
    folder = root / source.dir
    split_file = folder / "synthshot" / f"split_{proto}.json"
    mirrors = list(mirrors or []) + mirrors_from_env()
    manifest = read_manifest(folder)
    if folder.exists() and manifest is None:
        raise DataError(
            f"{folder} exists but was not prepared by synthshot (no synthshot/manifest.json): move it aside "
            f"and run prepare again (its archives can be passed with --from-archive)"
        )

    # 1. plan
    if manifest is not None and proto in manifest.get("protocols", {}):
        record = manifest["protocols"][proto]
        if imagefolder != "none" and record.get("imagefolder") != imagefolder and not dry_run:
            view = _imagefolder(folder, source, info, proto, imagefolder, manifest, echo)
            return PrepareResult(source.name, proto, folder, split_file, "imagefolder added", record["counts"], view)
        if manifest.get("registry", {}).get("sha256") != source.fingerprint:
            echo(f"note: {folder} was prepared from another version of the registry entry; "
                 f"`synthshot datasets verify {source.name} --root {root}` checks it")
        echo(f"{source.name}: already prepared ({proto}) in {folder}; nothing to do")
        return PrepareResult(source.name, proto, folder, split_file, "already prepared", record["counts"])

    done = set(manifest.get("files", {})) if manifest is not None else set()
    user, rest = _match_user_paths([Path(p).expanduser().absolute() for p in from_archives],
                                   [f for f in source.files if f.filename not in done])
    # the protocol's files, and any other file of the dataset the user passed (it belongs in the layout)
    needed = [f for f in source.files
              if f.filename not in done and (f in source.files_for(proto) or f.id in user)]
    for line in describe_plan(source, proto, needed, folder, mirrors):
        echo(line)
    if dry_run:
        echo("dry run: nothing fetched or written")
        return PrepareResult(source.name, proto, folder, split_file, "dry run")

    cache = root / ".cache" / source.name
    if rest and not source.locate:
        expected = ", ".join(f.filename for f in needed) or "nothing more"
        raise DataError(f"--from-archive {rest[0]} is not a file of {source.title} (expected: {expected})")
    may_locate = {i for loc in source.locate for i in loc.replaces} if rest else set()
    unobtainable = [
        f for f in needed
        if f.id not in user and f.id not in may_locate and not (cache / f.filename).is_file()
        and not candidate_urls(f, source.name, mirrors)
    ]
    if unobtainable:
        raise manual_instructions(source, unobtainable)

    downloads = [f for f in needed if f.id not in user and f.id not in may_locate and not (cache / f.filename).is_file()]
    if downloads and http.is_offline:
        names = ", ".join(quote(f.filename) for f in downloads)
        raise DataError(
            f"offline ({http.offline_reason()}): {source.name} needs {names}, which would have to be downloaded: put "
            f"your copies in {quote(cache)} or pass them with --from-archive, or go online (drop --offline, unset "
            "HF_HUB_OFFLINE)"
        )
    _check_space(root, downloads, echo)

    # 2. fetch
    record = DownloadRecord(cache)
    fetched: dict[str, Fetched] = {}
    for spec in needed:
        if spec.id in may_locate and spec.id not in user:
            continue
        got = _obtain(spec, source, cache, user, mirrors, http, echo, record)
        _echo_fetched(echo, spec, got, record)
        fetched[spec.id] = got

    # 3. build (a fresh tree in staging, or the files a new protocol adds to a prepared tree)
    fresh = manifest is None
    staging = root / (f".{source.dir}.staging" if fresh else f".{source.dir}.adding")
    _fresh_staging(staging)
    tree = staging if fresh else folder
    scratch: Path | None = None
    try:
        for spec in needed:
            if spec.id in fetched and spec.is_archive:
                echo(f"  extracting {spec.filename}")
                extract(fetched[spec.id].path, staging, spec.extract, label=spec.filename, progress=http.progress,
                        max_bytes=max_extract_bytes)
        replaced, origins = (set(), {})
        if rest:
            lacking = [f for f in needed if f.id not in fetched]
            cache.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=cache))
            replaced, origins = _locate(rest, source, lacking, staging, scratch, http.progress, echo, max_extract_bytes)
        lacking = [f.filename for f in needed if f.id not in fetched and f.id not in replaced]
        if lacking:
            raise DataError(
                f"the --from-archive inputs hold no copy of {', '.join(lacking)} for {source.title}: "
                + " ".join(source.instructions[-2:])
            )
        for spec in needed:
            if spec.id in fetched and spec.place:
                _place(spec, fetched[spec.id], staging)
        if not fresh:
            _merge_into(staging, folder)
        for step in source.postprocess:
            moved = POSTPROCESS[step](tree)
            if moved:
                echo(f"  {step}: {moved} files regrouped")
        generated = [GENERATORS[g](tree, info).name for g in source.generate] if fresh else []

        # 4. split
        plain = {f.id: tree / f.place for f in source.files if f.place and (tree / f.place).is_file()}
        ctx = SplitContext(tree=tree, source=source, info=info, protocol=source.protocols[proto], files=plain)
        split = read_split(ctx)
        where = f"the {proto} split of {source.name}"
        try:
            counts = check_split(tree, split, source.protocols[proto], info, where)
        except MissingImagesError as exc:
            report = cache / f"missing-{proto}.txt"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text("\n".join(exc.missing) + "\n", encoding="utf-8")
            raise DataError(f"{exc} (full list: {report})") from None
        records = {spec.filename: _file_record(spec, fetched[spec.id]) for spec in needed if spec.id in fetched}
        records.update(
            {spec.filename: _file_record(spec, None, ", ".join(sorted(set(origins.values()))))
             for spec in needed if spec.id in replaced and spec.id not in fetched}
        )
        manifest = write_metadata(tree, source, info, proto, split, counts, records, generated, manifest)

        # 5. the tree becomes final
        if fresh:
            (staging / STAGING_MARKER).unlink()
            os.replace(staging, folder)
    finally:
        for ours in (staging, scratch):  # both made by this run
            if ours is not None and ours.exists():
                shutil.rmtree(ours, ignore_errors=True)
    echo(f"{source.name}: {proto} split with {counts['train']} train / {counts['val']} val / {counts['test']} test "
         f"images -> {split_file}")

    # 6. ImageFolder view
    view = _imagefolder(folder, source, info, proto, imagefolder, manifest, echo) if imagefolder != "none" else None
    return PrepareResult(source.name, proto, folder, split_file, "prepared" if fresh else "protocol added", counts, view)


def _imagefolder(folder: Path, source: DatasetSource, info: DatasetInfo, proto: str, mode: str, manifest: dict,
                 echo) -> Path:
    from synthshot.datasets.verify import read_split_rows

    split = read_split_rows(folder / "synthshot" / f"split_{proto}.json")
    view = materialise(folder, proto, split, info.num_classes, mode)
    manifest["protocols"][proto]["imagefolder"] = mode
    atomic_write_json(folder / "synthshot" / "manifest.json", manifest)
    echo(f"{source.name}: ImageFolder view ({mode}) -> {view}")
    return view
