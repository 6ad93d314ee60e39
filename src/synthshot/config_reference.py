"""The config reference: every key of `RunConfig` with its type, default and meaning, read from the
pydantic models themselves (their fields, constraints and `Field(description=...)`).

`config_keys` lists the keys, `explain` describes one key or section (`synthshot config --explain`),
and `reference_markdown` writes the whole reference. `docs/config.md` is its output:

    python -m synthshot.config_reference > docs/config.md
"""

from __future__ import annotations

import difflib
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from synthshot.config import FINETUNE_RECIPES, FinetuneConfig, RunConfig
from synthshot.errors import ConfigError

REGENERATE = "python -m synthshot.config_reference > docs/config.md"


@dataclass(frozen=True)
class KeyInfo:
    """One config key: its dotted name, its type and default as a user writes them, its meaning.

    `section` marks a key that holds a section of further keys; `recipe_defaults` gives the
    defaults each named fine-tuning recipe (`finetune.recipe`) puts in place of `default`."""

    key: str
    type: str
    default: str
    description: str
    section: bool = False
    recipe_defaults: tuple[tuple[str, str], ...] = ()


def config_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[KeyInfo]:
    """Every key of `model`, in declaration order; a section's key comes before its own keys."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        section = _section_model(field.annotation)
        if section is not None:
            optional = _is_optional(field.annotation)
            keys.append(KeyInfo(
                key=key,
                type="section | null" if optional else "section",
                default="null" if optional and _default(field) is None else "{}",
                description=_one_paragraph(field.description or section.__doc__ or ""),
                section=True,
            ))
            keys += config_keys(section, f"{key}.")
            continue
        keys.append(KeyInfo(
            key=key,
            type=_type_text(field.annotation, field.metadata),
            default=_yaml_text(_default(field)),
            description=_one_paragraph(field.description or ""),
            recipe_defaults=_recipe_defaults(model, name, _default(field)),
        ))
    return keys


def explain(key: str | None = None) -> str:
    """The reference text of one key, or of every key in a section (`finetune`, `classifier.test`),
    or of every key (None or empty). An unknown key is a ConfigError naming the closest one."""
    keys = config_keys()
    wanted = (key or "").strip().rstrip(".")
    if wanted:
        chosen = [info for info in keys if info.key == wanted or info.key.startswith(f"{wanted}.")]
        if not chosen:
            raise ConfigError(_unknown_key_message(wanted, [info.key for info in keys]))
    else:
        chosen = keys
    return "\n\n".join(_explain_one(info) for info in chosen) + "\n"


def reference_markdown() -> str:
    """The whole reference as Markdown: an introduction, then one table per section."""
    keys = config_keys()
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from src/synthshot/config.py by `{REGENERATE}`; do not edit. -->",
        "",
        "Every key a synthshot config accepts, with its type, default and meaning. A config is a YAML "
        "file of sections (`data:`, `generation:`, ...); on the command line a key is dotted, as in "
        "`--set generation.steps=20`, and the value is read as YAML. Keys a config leaves out take the "
        "defaults below (a `preset:` sets many of them first); an unknown key or a value of the wrong "
        "type is an error that names the key.",
        "",
        "`synthshot config --explain KEY` prints the entry of one key or of a whole section (e.g. "
        "`synthshot config --explain finetune`), and `synthshot config CONFIG` prints the config a run "
        "would use, every default filled in.",
        "",
        "Types: `path` is a file or folder path (relative to the folder `synthshot` runs in), `null` "
        "means unset, `\"a\" | \"b\"` lists the allowed values, and `[a, b]` / `(a, b)` are closed / "
        "open ranges.",
    ]
    for title, intro, rows in _tables(keys):
        lines += ["", f"## {title}", ""]
        if intro:
            lines += [intro, ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for info in rows:
            default = f"`{_cell(info.default)}`"
            if info.recipe_defaults:
                default += " (" + ", ".join(f"{name}: `{_cell(value)}`" for name, value in info.recipe_defaults) + ")"
            lines.append(f"| `{info.key}` | `{_cell(info.type)}` | {default} | {_prose_cell(info.description)} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- helpers
def _tables(keys: list[KeyInfo]) -> list[tuple[str, str, list[KeyInfo]]]:
    """(title, introduction, rows) of the top level and of every section, in declaration order."""
    sections = [info for info in keys if info.section]
    tables = [("Top level", "", [info for info in keys if not info.section and "." not in info.key])]
    for section in sections:
        rows = [info for info in keys if not info.section and info.key.rpartition(".")[0] == section.key]
        intro = section.description
        if section.type.endswith("null"):
            intro += f" Unset (`{section.key}: null`) by default; its keys' defaults apply once it is given."
        if section.key == "finetune":
            intro += " " + _recipe_note()
        tables.append((f"`{section.key}`", _prose(intro), rows))
    return tables


def _recipe_note() -> str:
    names = [name for name, values in FINETUNE_RECIPES.items() if values]
    return (
        f"The defaults shown are those of the default recipe, `{FinetuneConfig.model_fields['recipe'].default}`; "
        f"another recipe ({', '.join(f'`{name}`' for name in names)}) gives its own defaults, shown in parentheses, "
        "to the keys the config does not set itself."
    )


def _explain_one(info: KeyInfo) -> str:
    head = f"{info.key}: {info.type}"
    if not (info.section and info.default == "{}"):
        head += f", default {info.default}"
    for name, value in info.recipe_defaults:
        head += f" ({name} recipe: {value})"
    return f"{head}\n  {info.description}"


def _unknown_key_message(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key}: did you mean {close[0]}?"
    top = [name for name in known if "." not in name]
    return f"unknown key {key}: the top-level keys and sections are {', '.join(top)}"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (`DataConfig`, `DemoDataConfig | None`), or None."""
    candidates = [annotation, *typing.get_args(annotation)] if _is_union(annotation) else [annotation]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_optional(annotation: Any) -> bool:
    return _is_union(annotation) and type(None) in typing.get_args(annotation)


def _default(field) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def _type_text(annotation: Any, metadata: list | tuple = ()) -> str:
    """A type as a user writes its values: `int >= 1`, `list[str]`, `"a" | "b"`, `path | null`."""
    if _is_union(annotation):
        args = typing.get_args(annotation)
        parts = [_type_text(arg, metadata) for arg in args if arg is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(f'"{value}"' if isinstance(value, str) else _yaml_text(value) for value in args)
    if origin in (list, tuple, dict):
        inner = [_type_text(arg) for arg in args if arg is not Ellipsis and arg is not Any]
        text = origin.__name__ + (f"[{', '.join(inner)}]" if inner else "")
        if any(getattr(item, "min_length", None) == 1 for item in metadata):
            text = f"non-empty {text}"
        return text
    names = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}
    text = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return text + _bounds_text(metadata)


def _bounds_text(metadata: list | tuple) -> str:
    """` >= 1`, ` in [0, 1)`: the bounds of pydantic's constraints (annotated_types' Ge, Gt, Le, Lt)."""
    low = high = None
    for item in metadata:
        for name, bracket in (("ge", "["), ("gt", "(")):
            if getattr(item, name, None) is not None:
                low = (bracket, getattr(item, name))
        for name, bracket in (("le", "]"), ("lt", ")")):
            if getattr(item, name, None) is not None:
                high = (bracket, getattr(item, name))
    if low and high:
        return f" in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f" {'<=' if high[0] == ']' else '<'} {_number(high[1])}"
    return ""


def _number(value: float) -> str:
    return format(value, "g")


def _yaml_text(value: Any) -> str:
    """A value as it is written in a YAML config (flow style, one line)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _recipe_defaults(model: type[BaseModel], name: str, default: Any) -> tuple[tuple[str, str], ...]:
    """(recipe, its default) for each fine-tuning recipe that gives the key a default of its own."""
    if model is not FinetuneConfig:
        return ()
    return tuple((recipe, _yaml_text(values[name])) for recipe, values in FINETUNE_RECIPES.items()
                 if name in values and _yaml_text(values[name]) != _yaml_text(default))


def _one_paragraph(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """Markdown of plain text: `<name>` outside code spans is shown, not read as HTML."""
    parts = text.split("`")
    parts[::2] = [part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for part in parts[::2]]
    return "`".join(parts)


def _prose_cell(text: str) -> str:
    return _cell(_prose(text))


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
