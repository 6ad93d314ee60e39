"""Where each benchmark's files come from and how they become a dataset folder.

One declarative entry per dataset (``synthshot/datasets/sources/<name>.json``, package data):

* ``files``: every file to fetch, with its URLs, size, the md5 its publisher gives and our sha256.
  A checksum nobody has pinned yet is ``null`` with a ``checksums`` note saying so; it is never
  made up. An archive carries ``extract`` rules (which members go where in the dataset folder,
  nested archives included); a plain file carries ``place`` (where it goes).
* ``protocols``: how the train/val/test split is read (``kind`` names a reader in
  :mod:`synthshot.datasets.layouts`), the expected counts per split and where the split comes from.
* ``mode``: ``auto`` (fetched from the authors' or maintainers' URLs) or ``manual`` (the user's own
  archives, with ``instructions`` and, for re-packaged copies, ``locate`` rules).
* ``terms``: the terms of use, printed before anything is fetched.

Class names and templates are not repeated here: they live in :mod:`synthshot.data.registry`.

A folder of replacement entries (``--registry DIR`` or ``SYNTHSHOT_DATASETS_REGISTRY``) overrides
the built-in ones by name: lab mirrors with their own re-packaged files, and the tests, which serve
tiny archives with their real hashes from a local server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from synthshot.errors import ConfigError, DataError
from synthshot.io import quote

REGISTRY_ENV = "SYNTHSHOT_DATASETS_REGISTRY"
MIRROR_ENV = "SYNTHSHOT_DATASETS_MIRROR"
PROTOCOLS = ("coop", "official")
SPLITS = ("train", "val", "test")
_HEX = {"md5": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_NAME = re.compile(r"^[a-z0-9_]+$")


class RegistryError(ConfigError, DataError):
    """A dataset registry entry (built-in, ``--registry`` or $SYNTHSHOT_DATASETS_REGISTRY) that does
    not validate. A ``ConfigError``, and a ``DataError`` for callers that catch those."""


@dataclass(frozen=True)
class Nested:
    """An archive inside an archive (Caltech's zip holds a tar.gz; ImageNet's train tar holds 1000 tars)."""

    rules: tuple[ExtractRule, ...]
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ExtractRule:
    """Members whose path starts with ``source`` (or equals it) go to ``to`` + the rest of their path.

    ``glob`` keeps only members whose full path matches it; ``flatten`` keeps only the file name;
    ``nested`` extracts the member as an archive with its own rules (``{stem}`` in their ``to`` is
    the member's name without its archive suffix).
    """

    source: str
    to: str
    glob: str | None = None
    flatten: bool = False
    nested: Nested | None = None


@dataclass(frozen=True)
class FileSpec:
    id: str
    filename: str
    urls: tuple[str, ...]
    size: int | None
    md5: str | None
    sha256: str | None
    checksums: str  # where the values come from, or why one is missing
    protocols: tuple[str, ...] | None  # None: every protocol needs it
    extract: tuple[ExtractRule, ...] = ()
    place: str | None = None
    pinned_by: str = ""  # where sha256 comes from when it is not the registry's (a first-download record)

    @property
    def is_archive(self) -> bool:
        return bool(self.extract)

    def checksum_status(self) -> str:
        if self.sha256:
            return "sha256 pinned"
        if self.md5:
            return "md5 only (publisher's)"
        return "no checksum pinned"


@dataclass(frozen=True)
class Protocol:
    name: str
    kind: str  # reader in synthshot.datasets.layouts.SPLIT_READERS
    options: dict[str, Any]
    counts: dict[str, int]  # expected images per split ("train+val" where val is carved from train)
    origin: str
    val_from_train: float | None = None  # fraction of each class's train images moved to val (seeded)
    classes: int | None = None  # expected number of classes present (default: every registry class)


@dataclass(frozen=True)
class Locate:
    """For re-packaged copies: a folder named ``name`` holding entries matching ``contains`` (or a
    file matching ``file``) goes to ``to``, and stands in for the files listed in ``replaces``."""

    to: str
    replaces: tuple[str, ...]
    name: str | None = None
    contains: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class Terms:
    url: str
    summary: str
    redistribution: str


@dataclass(frozen=True)
class DatasetSource:
    name: str
    title: str
    dir: str  # folder under --root, as the peers' code (CoOp) expects it
    mode: str  # "auto" or "manual"
    homepage: str
    terms: Terms
    files: tuple[FileSpec, ...]
    protocols: dict[str, Protocol]
    default_protocol: str
    note: str = ""
    instructions: tuple[str, ...] = ()
    locate: tuple[Locate, ...] = ()
    generate: tuple[str, ...] = ()
    postprocess: tuple[str, ...] = ()
    origin: str = ""  # the entry's file, for messages
    fingerprint: str = field(default="", compare=False)  # sha256 of the entry, recorded in manifests

    def protocol(self, name: str | None) -> Protocol:
        key = name or self.default_protocol
        if key not in self.protocols:
            offered = ", ".join(self.protocols)
            raise DataError(
                f"dataset {self.name!r} has no {key!r} protocol (it offers: {offered}); "
                f"use --protocol {self.default_protocol}"
            )
        return self.protocols[key]

    def files_for(self, protocol: str) -> list[FileSpec]:
        return [f for f in self.files if f.protocols is None or protocol in f.protocols]

    def file(self, file_id: str) -> FileSpec:
        for f in self.files:
            if f.id == file_id:
                return f
        raise DataError(f"registry entry {quote(self.origin)} names file {file_id!r}, which it does not list")

    def size_text(self) -> str:
        """Download size of every file, e.g. '625.2 MB' ('+ ?' where a size is unknown)."""
        known = [f.size for f in self.files if f.size]
        text = human_size(sum(known)) if known else "?"
        return text + (" + ?" if len(known) < len(self.files) and known else "")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# -- parsing ------------------------------------------------------------------------------------


def _req(data: dict, key: str, where: str) -> Any:
    if key not in data:
        raise RegistryError(f"dataset registry entry {quote(where)} has no {key!r} field; fix the entry or reinstall synthshot")
    return data[key]


def _checksum(data: dict, key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _HEX[key].match(value):
        raise RegistryError(f"dataset registry entry {quote(where)}: {key} {value!r} is not a lower-case hex digest")
    return value


def check_relative(value: Any, where: str, dataset: str, field: str, *, single: bool = False,
                   may_be_empty: bool = False) -> str:
    """A registry path joined under --root (or a dataset folder): relative, inside it, portable.

    Refused: non-strings, empty (unless ``may_be_empty``), control characters, backslashes, a
    drive (``C:``), an absolute path, ``.`` or ``..`` parts, empty parts (``a//b``); with
    ``single``, anything but one plain name that does not start with a dot (the names synthshot
    gives its own temporary files and records start with one). A trailing ``/`` (a folder, in
    extract rules) is allowed where the path may be empty.
    """
    def refuse(why: str) -> RegistryError:
        return RegistryError(
            f"dataset registry entry {quote(where)}: dataset {quote(dataset)} field {field} is {quote(value)}, {why}: "
            "use a relative path that stays inside --root (fix the entry, or drop --registry / "
            "$SYNTHSHOT_DATASETS_REGISTRY to use the built-in one)"
        )

    if not isinstance(value, str):
        raise refuse("not a string")
    if value == "" and may_be_empty:
        return value
    if not value.strip():
        raise refuse("empty")
    if _CONTROL.search(value):
        raise refuse("which holds control characters")
    if "\\" in value:
        raise refuse("which holds a backslash")
    if _DRIVE.match(value):
        raise refuse("which names a drive")
    if value.startswith("/"):
        raise refuse("an absolute path")
    parts = (value[:-1] if may_be_empty and value.endswith("/") else value).split("/")
    if ".." in parts:
        raise refuse("which climbs out with '..'")
    if any(p in ("", ".") for p in parts):
        raise refuse("which has an empty or '.' part")
    if single and (len(parts) > 1 or value.startswith(".")):
        raise refuse("not one plain name (no '/', no leading '.')")
    return value


def _rules(raw: list, where: str, dataset: str = "?", field: str = "extract") -> tuple[ExtractRule, ...]:
    rules = []
    for r in raw:
        nested = None
        index = len(rules)
        if "nested" in r:
            n = r["nested"]
            nested = Nested(
                rules=_rules(_req(n, "extract", where), where, dataset, f"{field}[{index}].nested.extract"),
                size=n.get("size"),
                md5=_checksum(n, "md5", where),
                sha256=_checksum(n, "sha256", where),
            )
        rules.append(
            ExtractRule(
                source=str(r.get("from", "")),
                to=check_relative(r.get("to", ""), where, dataset, f"{field}[{index}].to", may_be_empty=True),
                glob=r.get("glob"),
                flatten=bool(r.get("flatten", False)),
                nested=nested,
            )
        )
    return tuple(rules)


def _file(raw: dict, where: str, dataset: str, index: int) -> FileSpec:
    extract = _rules(raw.get("extract", []), where, dataset, f"files[{index}].extract")
    place = raw.get("place")
    if place is not None:
        check_relative(place, where, dataset, f"files[{index}].place")
    if bool(extract) == bool(place):
        raise RegistryError(f"dataset registry entry {quote(where)}: file {raw.get('id')!r} needs either 'extract' or 'place'")
    sha256, md5 = _checksum(raw, "sha256", where), _checksum(raw, "md5", where)
    note = str(raw.get("checksums", ""))
    if not sha256 and not note:
        raise RegistryError(
            f"dataset registry entry {quote(where)}: file {raw.get('id')!r} has no sha256 and no 'checksums' note saying why"
        )
    protocols = raw.get("protocols")
    return FileSpec(
        id=str(_req(raw, "id", where)),
        filename=check_relative(_req(raw, "filename", where), where, dataset, f"files[{index}].filename", single=True),
        urls=tuple(str(u) for u in raw.get("urls", ())),
        size=raw.get("size"),
        md5=md5,
        sha256=sha256,
        checksums=note,
        protocols=tuple(protocols) if protocols is not None else None,
        extract=extract,
        place=place,
    )


def parse_source(data: dict, where: str) -> DatasetSource:
    """Check and convert one registry entry (the JSON object)."""
    terms = _req(data, "terms", where)
    name = str(_req(data, "name", where))
    if not _NAME.match(name):
        raise RegistryError(f"dataset registry entry {quote(where)}: name {quote(name)} must be lower-case letters, digits and '_'")
    dataset_dir = check_relative(_req(data, "dir", where), where, name, "dir", single=True)
    protocols = {}
    for key, raw in _req(data, "protocols", where).items():
        if key not in PROTOCOLS:
            raise RegistryError(f"dataset registry entry {quote(where)}: unknown protocol {key!r} (use {', '.join(PROTOCOLS)})")
        protocols[key] = Protocol(
            name=key,
            kind=str(_req(raw, "kind", where)),
            options=dict(raw.get("options", {})),
            counts={str(k): int(v) for k, v in raw.get("counts", {}).items()},
            origin=str(raw.get("origin", "")),
            val_from_train=raw.get("val_from_train"),
            classes=raw.get("classes"),
        )
    files = tuple(_file(f, where, name, i) for i, f in enumerate(_req(data, "files", where)))
    ids = [f.id for f in files]
    if len(set(ids)) != len(ids):
        raise RegistryError(f"dataset registry entry {quote(where)}: two files share an id")
    mode = str(_req(data, "mode", where))
    if mode not in ("auto", "manual"):
        raise RegistryError(f"dataset registry entry {quote(where)}: mode must be 'auto' or 'manual', not {mode!r}")
    default = str(data.get("default_protocol", "coop"))
    if default not in protocols:
        raise RegistryError(f"dataset registry entry {quote(where)}: default protocol {default!r} is not described")
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return DatasetSource(
        name=name,
        title=str(_req(data, "title", where)),
        dir=dataset_dir,
        mode=mode,
        homepage=str(data.get("homepage", "")),
        terms=Terms(
            url=str(_req(terms, "url", where)),
            summary=str(_req(terms, "summary", where)),
            redistribution=str(terms.get("redistribution", "unknown")),
        ),
        files=files,
        protocols=protocols,
        default_protocol=default,
        note=str(data.get("note", "")),
        instructions=tuple(str(s) for s in data.get("instructions", ())),
        locate=tuple(
            Locate(
                to=check_relative(_req(loc, "to", where), where, name, f"locate[{i}].to"),
                replaces=tuple(_req(loc, "replaces", where)),
                name=loc.get("name"),
                contains=loc.get("contains"),
                file=loc.get("file"),
            )
            for i, loc in enumerate(data.get("locate", ()))
        ),
        generate=tuple(data.get("generate", ())),
        postprocess=tuple(data.get("postprocess", ())),
        origin=where,
        fingerprint=hashlib.sha256(canonical).hexdigest(),
    )


# -- loading ------------------------------------------------------------------------------------


def _builtin_dir():
    return resources.files("synthshot.datasets").joinpath("sources")


def dataset_names() -> list[str]:
    """Names of the built-in entries, sorted."""
    return sorted(e.name[: -len(".json")] for e in _builtin_dir().iterdir() if e.name.endswith(".json"))


def _override_dir(registry_dir: str | Path | None) -> Path | None:
    if registry_dir is None:
        registry_dir = os.environ.get(REGISTRY_ENV) or None
    return Path(registry_dir) if registry_dir is not None else None


def load_source(name: str, registry_dir: str | Path | None = None) -> DatasetSource:
    """The entry of one dataset: from ``registry_dir`` (or $SYNTHSHOT_DATASETS_REGISTRY) when it
    holds ``<name>.json``, else the built-in one."""
    key = str(name).strip().lower().replace("-", "_")
    override = _override_dir(registry_dir)
    if not _NAME.match(key):  # never a path: "../x" must not read ../x.json from the registry folder
        raise DataError(f"unknown dataset {quote(name)}; known datasets: {', '.join(dataset_names())}")
    if override is not None and (override / f"{key}.json").is_file():
        path = override / f"{key}.json"
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"dataset registry entry {quote(where)} cannot be read ({exc}): fix or remove it") from None
    else:
        known = dataset_names()
        if key not in known:
            raise DataError(f"unknown dataset {quote(name)}; known datasets: {', '.join(known)}")
        where = f"synthshot/datasets/sources/{key}.json"
        text = _builtin_dir().joinpath(f"{key}.json").read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"dataset registry entry {quote(where)} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise RegistryError(f"dataset registry entry {quote(where)} is not a JSON object: fix or remove it")
    source = parse_source(data, where)
    if source.name != key:
        raise RegistryError(f"dataset registry entry {quote(where)} describes {quote(source.name)}, not {quote(key)}")
    return source


def mirrors_from_env() -> list[str]:
    """Mirror base URLs from $SYNTHSHOT_DATASETS_MIRROR (separated by spaces or commas)."""
    return [m for m in re.split(r"[\s,]+", os.environ.get(MIRROR_ENV, "")) if m]
