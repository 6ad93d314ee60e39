"""The prompts stage: N prompts per class from the configured backend, written to `prompts.json`
(class key -> list of prompts), and read back with validation."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from synthshot.errors import ConfigError, DataError, ModelError
from synthshot.io import atomic_write_json, parse_json
from synthshot.prompts.cache import PromptCache, cache_key
from synthshot.prompts.instruction import class_form, instruction_template
from synthshot.prompts.parse import normalise, select_prompts
from synthshot.prompts.templates import dataset_templates, template_prompts

if TYPE_CHECKING:
    from synthshot.config import PromptsConfig
    from synthshot.models.hub import HubOptions

PROMPTS_FILE = "prompts.json"
_OR = re.compile(r"\s+or\s+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NUMBER_PREFIX = re.compile(r"^\d+[._\- ]+")


def class_aliases(key: str, name: str, dataset: str | None = None) -> tuple[str, ...]:
    """Other names an LLM may give class `name` (key `key`) in a prompt, accepted like the name.

    The registry has no field for this, so they are derived: with a registry `dataset`, the
    class's published name ("Highway", "AnnualCrop") and that name split at its capitals ("Annual
    Crop"), and its folder spellings, when they have letters and no "/" (not "1" or "n01440764" or
    SUN397's "/a/abbey"); for any class, each part of an "X or Y" name ("Highway", "Road"; not
    within brackets). Names equal to `name` after `normalise` are left out."""
    found: list[str] = []
    if dataset is not None:
        from synthshot.data.registry import get_dataset

        try:
            entry = get_dataset(dataset).match_folder(key)
        except DataError:
            entry = None
        if entry is not None and normalise(entry.name) == normalise(name):
            for spelling in (entry.official, *entry.aliases):
                spelling = _NUMBER_PREFIX.sub("", spelling.strip())
                if "/" in spelling or sum(c.isalpha() for c in spelling) < 2:
                    continue
                found += [spelling, _CAMEL.sub(" ", spelling)]
    parts = [p.strip() for p in _OR.split(name.strip())]
    if len(parts) > 1 and all(parts) and not any(c in name for c in "()[]"):  # not "hat (bearskin or shako)"
        found += parts
    seen = {normalise(name)}
    aliases = []
    for alias in found:
        if normalise(alias) and normalise(alias) not in seen:
            seen.add(normalise(alias))
            aliases.append(alias)
    return tuple(aliases)


def check_class_names(class_names: dict[str, str]) -> None:
    if not class_names:
        raise DataError("no classes to write prompts for: the dataset has no class folders")
    for key, name in class_names.items():
        if not isinstance(key, str) or not key.strip():
            raise DataError(f"class key {key!r} is empty: give every class folder a name")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"class {key!r} has an empty prompt name {name!r}: give it a readable name")


def write_class_prompts(
    settings: PromptsConfig,
    class_names: dict[str, str],
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    hub_options: HubOptions | None = None,
    device: str = "cpu",
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    backoff: float = 1.0,
    diffusion: str | None = None,
) -> dict[str, list[str]]:
    """Write `out_dir/prompts.json` with `settings.per_class` prompts per class key and return them
    (an LLM class may have fewer, down to `settings.min_per_class`, with a warning).

    `class_names` maps each class key (folder name) to the name used in prompts; a prompt may also
    name the class by one of its `class_aliases` (from the registry `dataset`). LLM answers are
    cached in `settings.cache_dir` (default `out_dir/cache`) after every answer, so a failure keeps
    the classes already done and a rerun asks only for what is missing. `sleep` and `backoff` (the
    first retry delay in seconds, doubled after each failure in a row) pace retries. `diffusion`
    (models.diffusion) gives the tokenizer `settings.max_tokens` counts in.
    """
    out_dir = Path(out_dir)
    check_class_names(class_names)
    n = settings.per_class
    if settings.backend == "template":
        templates = dataset_templates(dataset)
        prompts = {key: template_prompts(name.strip(), n, templates) for key, name in class_names.items()}
        source = f"templates of {dataset}" if dataset else "generic photo templates"
    else:
        prompts, source = _llm_prompts(
            settings, class_names, out_dir, hub_options, device, echo, sleep, backoff, dataset, diffusion
        )
    path = out_dir / PROMPTS_FILE
    atomic_write_json(path, prompts)
    short = sum(len(p) < n for p in prompts.values())
    fewer = f", {short} classes with fewer (prompts.min_per_class)" if short else ""
    echo(f"prompts: {n} per class for {len(prompts)} classes ({source}{fewer}) -> {path}")
    return prompts


def _llm_prompts(settings, class_names, out_dir, hub_options, device, echo, sleep, backoff, dataset, diffusion):
    from synthshot.prompts.backends import check_llm_settings, make_backend
    from synthshot.prompts.llm import ask_for_prompts

    check_llm_settings(settings)
    n = settings.per_class
    instruction = instruction_template(settings.instruction)
    count_tokens = None
    if settings.max_tokens is not None:
        if not diffusion:
            raise ConfigError(
                "prompts.max_tokens counts tokens with the text-to-image model's tokenizer, but no models.diffusion "
                "was given: run the prompts stage from a config, or unset prompts.max_tokens"
            )
        from synthshot.prompts.tokens import diffusion_token_counter

        count_tokens = diffusion_token_counter(diffusion, hub_options)
    cache = PromptCache(settings.cache_dir or out_dir / "cache")
    checks = {
        "min_chars": settings.min_chars,
        "max_chars": settings.max_chars,
        "class_first": class_form(instruction) or False,
        "max_tokens": settings.max_tokens,
        "count_tokens": count_tokens,
    }
    limits = {"max_new_tokens": settings.max_new_tokens, "timeout": settings.timeout}
    backend = None  # loaded only when some class is not cached
    prompts: dict[str, list[str]] = {}
    cached = 0
    for key, name in class_names.items():
        name = name.strip()
        aliases = class_aliases(key, name, dataset)
        entry = cache_key(settings.backend, settings.model, name, instruction, n)
        stored, seeds = cache.load(entry)
        # Cached prompts are checked again: the bounds, the limits or the aliases may have changed since.
        have = select_prompts(stored, name, near_duplicate=settings.near_duplicate, aliases=aliases, **checks).prompts
        if len(have) >= n:
            prompts[key] = have[:n]
            cached += 1
            continue
        if backend is None:
            backend = make_backend(settings, hub_options, device)
        try:
            prompts[key] = ask_for_prompts(
                backend,
                name,
                n,
                instruction,
                max_retries=settings.max_retries,
                have=have,
                on_answer=lambda kept, sent, entry=entry: cache.put(entry, kept, complete=len(kept) >= n, seeds=sent),
                sleep=sleep,
                backoff=backoff,
                min_count=settings.min_per_class,
                per_request=settings.per_request,
                temperature=settings.temperature,
                first_attempt=len(seeds),
                seeds=seeds,
                limits=limits,
                near_duplicate=settings.near_duplicate,
                aliases=aliases,
                min_chars=checks["min_chars"],
                max_chars=checks["max_chars"],
                max_tokens=checks["max_tokens"],
                count_tokens=count_tokens,
            )
        except ModelError as exc:
            raise ModelError(
                f"{exc} ({len(prompts)} of {len(class_names)} classes are done and cached in {cache.folder}; "
                "a rerun asks only for the rest)"
            ) from exc
        echo(f"prompts: {key}: {len(prompts[key])} prompts from {backend.describe}")
    what = backend.describe if backend is not None else f"{settings.backend} {settings.model}"
    return prompts, f"{what}, {cached} classes from the cache"


def load_prompts(path: str | Path, classes: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Read a `prompts.json` (class -> non-empty list of prompts); with `classes`, every one of them
    must be present. DataError naming the file and what is wrong otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} does not exist: run `synthshot prompts` first")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"prompts file {path} is not UTF-8 text: rerun `synthshot prompts`") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"prompts file {path} is not valid JSON ({exc.msg} at line {exc.lineno}): fix it or rerun `synthshot prompts`"
        ) from None
    if not isinstance(data, dict) or not data:
        got = "an empty mapping" if data == {} else f"a JSON {type(data).__name__}"
        raise DataError(
            f"prompts file {path} must map each class to a list of prompts, got {got}: rerun `synthshot prompts`"
        )
    for key, value in data.items():
        if not key.strip():
            raise DataError(f"prompts file {path} has an empty class name: remove that entry")
        if not isinstance(value, list) or not value or not all(isinstance(p, str) and p.strip() for p in value):
            raise DataError(
                f"prompts file {path}: class {key!r} must have a non-empty list of non-empty prompt strings"
            )
    if classes is not None:
        missing = [c for c in classes if c not in data]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise DataError(
                f"prompts file {path} has no prompts for {len(missing)} classes ({shown}): rerun `synthshot prompts`"
            )
    return data
