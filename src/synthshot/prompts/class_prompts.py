"""The prompts stage: N prompts per class from the configured backend, written to `prompts.json`
(class key -> list of prompts), and read back with validation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from synthshot.errors import DataError, ModelError
from synthshot.io import atomic_write_json, parse_json
from synthshot.prompts.cache import PromptCache, cache_key
from synthshot.prompts.instruction import asks_class_first, instruction_template
from synthshot.prompts.parse import check_prompt
from synthshot.prompts.templates import dataset_templates, template_prompts

if TYPE_CHECKING:
    from synthshot.config import PromptsConfig
    from synthshot.models.hub import HubOptions

PROMPTS_FILE = "prompts.json"


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
) -> dict[str, list[str]]:
    """Write `out_dir/prompts.json` with `settings.per_class` prompts per class key and return them.

    `class_names` maps each class key (folder name) to the name used in prompts. LLM answers are
    cached in `settings.cache_dir` (default `out_dir/cache`) after every answer, so a failure keeps
    the classes already done and a rerun asks only for what is missing. `sleep` and `backoff` (the
    first retry delay in seconds, doubled after each failure in a row) pace retries.
    """
    out_dir = Path(out_dir)
    check_class_names(class_names)
    n = settings.per_class
    if settings.backend == "template":
        templates = dataset_templates(dataset)
        prompts = {key: template_prompts(name.strip(), n, templates) for key, name in class_names.items()}
        source = f"templates of {dataset}" if dataset else "generic photo templates"
    else:
        prompts, source = _llm_prompts(settings, class_names, out_dir, hub_options, device, echo, sleep, backoff)
    path = out_dir / PROMPTS_FILE
    atomic_write_json(path, prompts)
    echo(f"prompts: {n} per class for {len(prompts)} classes ({source}) -> {path}")
    return prompts


def _llm_prompts(settings, class_names, out_dir, hub_options, device, echo, sleep, backoff):
    from synthshot.prompts.backends import check_llm_settings, make_backend
    from synthshot.prompts.llm import ask_for_prompts

    check_llm_settings(settings)
    n = settings.per_class
    instruction = instruction_template(settings.instruction)
    cache = PromptCache(settings.cache_dir or out_dir / "cache")
    bounds = {"min_chars": settings.min_chars, "max_chars": settings.max_chars}
    class_first = asks_class_first(instruction)
    backend = None  # loaded only when some class is not cached
    prompts: dict[str, list[str]] = {}
    cached = 0
    for key, name in class_names.items():
        name = name.strip()
        entry = cache_key(settings.backend, settings.model, name, instruction, n)
        # Cached prompts are checked again: the length bounds may have changed since.
        have = [p for p in cache.get(entry) if check_prompt(p, name, **bounds, class_first=class_first) is None]
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
                on_answer=lambda kept, entry=entry: cache.put(entry, kept, complete=len(kept) >= n),
                sleep=sleep,
                backoff=backoff,
                **bounds,
            )
        except ModelError as exc:
            raise ModelError(
                f"{exc} ({len(prompts)} of {len(class_names)} classes are done and cached in {cache.folder}; "
                "a rerun asks only for the rest)"
            ) from exc
        echo(f"prompts: {key}: {n} prompts from {backend.describe}")
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
