"""Registry of the 11 benchmark datasets: class lists, prompt names and prompt templates.

For each benchmark the registry holds, in the label order of the standard protocol (CoOp's for
ten of them, the official class ids for CUB):

* ``official``: the class as the dataset publishes it (folder name, wnid, variant, ...);
* ``name``: the human-readable name used in prompts, following CoOp's conventions;
* the DIPSY generation template and the zero-shot templates (CoOp's single template first);
* where each list comes from (``sources``).

The data live in ``synthshot/data/registry/<name>.json`` (package data, one file per dataset),
built by ``scripts/build_registry.py`` from public source text. They are read lazily and cached.

Folder names are matched to classes by :func:`resolve_class_names` and
:meth:`DatasetInfo.name_for_folder`, which accept the official names, the prompt names and
common re-spellings of both (case, ``_``/``-``/``/``/space, a ``001.``/``001_`` number prefix).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any, Iterable

from synthshot.errors import DataError
from synthshot.io import parse_json

__all__ = [
    "ClassEntry",
    "DatasetInfo",
    "get_dataset",
    "list_datasets",
    "resolve_class_names",
]

_PACKAGE = "synthshot.data"
_FOLDER = "registry"

_PROTOCOLS = {"coop": "CoOp", "official": "official"}

_SEP = re.compile(r"[\s_\-/]+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_NUMBER_PREFIX = re.compile(r"^(\d+)[._\- ]+(.+)$")


def _slug(text: str) -> str:
    """Lower case, with runs of spaces, ``_``, ``-`` and ``/`` turned into one space."""
    return " ".join(p for p in _SEP.split(text.lower()) if p)


def _compact(text: str) -> str:
    """Only the letters and digits, lower case; a plain number loses its leading zeros."""
    plain = text.strip()
    if plain.isdigit():
        return str(int(plain))
    return _NON_ALNUM.sub("", text.lower())


# Matching stages, strictest first: a folder is matched at the first stage that finds it.
_STAGES: tuple[tuple[str, Any], ...] = (
    ("exact", lambda s: s),
    ("case", lambda s: s.casefold()),
    ("slug", _slug),
    ("compact", _compact),
)


@dataclass(frozen=True)
class ClassEntry:
    """One class of a benchmark."""

    label: int  # 0-based, in the standard protocol's order
    name: str  # human-readable name used in prompts
    official: str  # as the dataset publishes it (folder name, wnid, variant, ...)
    aliases: tuple[str, ...] = ()  # other published spellings that folders may use

    def keys(self) -> tuple[str, ...]:
        """Every string a folder of this class may be spelled as (before normalisation)."""
        return (self.official, self.name, *self.aliases)


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark's classes and prompts, as stored in the registry."""

    name: str  # registry name, e.g. "eurosat"
    title: str  # "EuroSAT"
    template: str  # DIPSY generation template with "{}"
    zeroshot_templates: tuple[str, ...]  # CoOp single template first
    classes: tuple[ClassEntry, ...]
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    protocol: str = "coop"  # "coop" or "official" (CUB)
    complete: bool = True
    note: str = ""
    excluded: tuple[tuple[str, str], ...] = ()  # (official, reason): published but not in the protocol
    duplicate_names: tuple[str, ...] = ()  # prompt names shared by several classes, kept as published

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_names(self) -> list[str]:
        """Prompt names in label order."""
        return [c.name for c in self.classes]

    def official_names(self) -> list[str]:
        """Official names in label order."""
        return [c.official for c in self.classes]

    def prompt(self, class_name: str) -> str:
        """The DIPSY generation prompt for one class name."""
        return self.template.format(class_name)

    def zeroshot_prompts(self, class_name: str) -> list[str]:
        """The zero-shot prompts for one class name, one per template."""
        return [t.format(class_name) for t in self.zeroshot_templates]

    def match_folder(self, folder: str) -> ClassEntry:
        """The class a folder name stands for; ``DataError`` when it is unknown or ambiguous."""
        key = str(folder).strip().rstrip("/")
        if not key:
            raise DataError(f"empty folder name given for dataset {self.name!r}")
        found = self._lookup(key)
        if found is None:
            m = _NUMBER_PREFIX.match(key)
            if m and not m.group(2).isdigit():
                # "001.Black_footed_Albatross", "007_apple_pie": try the part after the number
                # (not when that part is a bare number too, which could be any label)
                found = self._lookup(m.group(2))
        if found is not None:
            return found
        excluded = self._excluded_reason(key)
        if excluded is not None:
            official, reason = excluded
            raise DataError(
                f"folder {folder!r} is the {self.title} class {official!r}, which the "
                f"{_PROTOCOLS.get(self.protocol, self.protocol)} protocol of dataset {self.name!r} "
                f"leaves out ({reason}); remove or rename the folder"
            )
        hint = difflib.get_close_matches(key, [c.official for c in self.classes], n=3, cutoff=0.6)
        hint += [h for h in difflib.get_close_matches(key, self.class_names(), n=3, cutoff=0.6) if h not in hint]
        more = f"; close matches: {', '.join(repr(h) for h in hint)}" if hint else ""
        raise DataError(
            f"folder {folder!r} matches no class of dataset {self.name!r} ({self.title}, "
            f"{self.num_classes} classes){more}; rename the folder to an official or prompt class "
            f"name, or leave out --dataset to use folder names as class names"
        )

    def name_for_folder(self, folder: str) -> str:
        """Official/folder name -> prompt name; ``DataError`` if unknown."""
        return self.match_folder(folder).name

    # -- internals ---------------------------------------------------------------------------
    @cached_property
    def _index(self) -> tuple[dict[str, tuple[int, ...]], ...]:
        tables: list[dict[str, tuple[int, ...]]] = []
        for _, norm in _STAGES:
            table: dict[str, list[int]] = {}
            for i, c in enumerate(self.classes):
                for k in c.keys():
                    nk = norm(k)
                    if nk and i not in table.setdefault(nk, []):
                        table[nk].append(i)
            tables.append({k: tuple(v) for k, v in table.items()})
        return tuple(tables)

    def _lookup(self, key: str) -> ClassEntry | None:
        for (stage, norm), table in zip(_STAGES, self._index):
            hits = table.get(norm(key))
            if not hits:
                continue
            entries = [self.classes[i] for i in hits]
            if len({e.name for e in entries}) == 1:
                return entries[0]
            listed = ", ".join(f"{e.official!r} ({e.name})" for e in entries)
            raise DataError(
                f"folder {key!r} matches several classes of dataset {self.name!r} ({stage} match): "
                f"{listed}; rename the folder to one of these official names"
            )
        return None

    def _excluded_reason(self, key: str) -> tuple[str, str] | None:
        for official, reason in self.excluded:
            for _, norm in _STAGES:
                if norm(official) == norm(key):
                    return official, reason
        return None


# -- loading ------------------------------------------------------------------------------------


def _registry_dir():
    return resources.files(_PACKAGE).joinpath(_FOLDER)


@lru_cache(maxsize=1)
def _available() -> tuple[str, ...]:
    names = []
    for entry in _registry_dir().iterdir():
        if entry.name.endswith(".json"):
            names.append(entry.name[: -len(".json")])
    return tuple(sorted(names))


def list_datasets() -> list[str]:
    """Registry names of the benchmarks, sorted."""
    return list(_available())


def _canonical(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _require(data: dict, key: str, where: str) -> Any:
    if key not in data:
        raise DataError(f"registry file {where} has no {key!r} field; reinstall synthshot")
    return data[key]


def _check_template(t: str, where: str) -> str:
    if not isinstance(t, str) or t.count("{}") != 1 or t.replace("{}", "").count("{") or t.replace("{}", "").count("}"):
        raise DataError(f"registry file {where}: template {t!r} must contain exactly one '{{}}'")
    return t


def _parse(data: dict, where: str) -> DatasetInfo:
    raw = _require(data, "classes", where)
    classes = []
    for i, c in enumerate(raw):
        if c.get("label") != i:
            raise DataError(f"registry file {where}: class {i} has label {c.get('label')!r}; expected {i}")
        classes.append(
            ClassEntry(
                label=i,
                name=str(_require(c, "name", where)),
                official=str(_require(c, "official", where)),
                aliases=tuple(str(a) for a in c.get("aliases", ())),
            )
        )
    num = data.get("num_classes", len(classes))
    if num != len(classes):
        raise DataError(f"registry file {where}: num_classes is {num} but {len(classes)} classes are listed")
    return DatasetInfo(
        name=str(_require(data, "name", where)),
        title=str(_require(data, "title", where)),
        template=_check_template(_require(data, "template", where), where),
        zeroshot_templates=tuple(_check_template(t, where) for t in _require(data, "zeroshot_templates", where)),
        classes=tuple(classes),
        sources=dict(_require(data, "sources", where)),
        protocol=str(data.get("protocol", "coop")),
        complete=bool(data.get("complete", True)),
        note=str(data.get("note", "")),
        excluded=tuple((str(e["official"]), str(e.get("reason", ""))) for e in data.get("excluded", ())),
        duplicate_names=tuple(str(n) for n in data.get("duplicate_names", ())),
    )


@lru_cache(maxsize=None)
def _load(name: str) -> DatasetInfo:
    where = f"{_FOLDER}/{name}.json"
    try:
        text = _registry_dir().joinpath(f"{name}.json").read_text(encoding="utf-8")
        data = parse_json(text)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read registry file {where}: {exc}; reinstall synthshot") from exc
    info = _parse(data, where)
    if info.name != name:
        raise DataError(f"registry file {where} describes dataset {info.name!r}; reinstall synthshot")
    return info


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry of a benchmark; ``DataError`` naming the closest name if unknown."""
    key = _canonical(name)
    available = _available()
    if key not in available:
        close = difflib.get_close_matches(key, available, n=1, cutoff=0.0)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"unknown dataset {name!r}{guess} Known datasets: {', '.join(available)}"
        )
    return _load(key)


def _plain_name(folder: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", str(folder).strip())).strip()


def resolve_class_names(folders: Iterable[str], dataset: str | None) -> dict[str, str]:
    """Folder name -> prompt name.

    With ``dataset=None`` the prompt name is the folder name with ``_`` and ``-`` turned into
    spaces. With a registry dataset each folder is matched against the official names, then the
    prompt names, then their re-spellings; every unmatched folder is reported in one
    ``DataError`` that names the folders and the dataset.
    """
    folders = list(folders)
    if dataset is None:
        out = {}
        for f in folders:
            name = _plain_name(f)
            if not name:
                raise DataError(f"folder {f!r} gives an empty class name; rename it")
            out[f] = name
        return out
    info = get_dataset(dataset)
    out: dict[str, str] = {}
    problems: list[str] = []
    for f in folders:
        try:
            out[f] = info.name_for_folder(f)
        except DataError as exc:
            problems.append(str(exc))
    if problems:
        if len(problems) == 1:
            raise DataError(problems[0])
        bad = [f for f in folders if f not in out]
        shown = ", ".join(repr(b) for b in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise DataError(
            f"{len(bad)} folders match no class of dataset {info.name!r} ({info.title}): {shown}. "
            f"First problem: {problems[0]}"
        )
    return out
