"""On-disk cache of LLM prompts: one JSON file per (backend, model, class, instruction, N), written
atomically after every answer, so a rerun asks nothing for finished classes and resumes a class
from the prompts it already has."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from synthshot.io import atomic_write_json, parse_json, slugify

logger = logging.getLogger("synthshot.prompts")


def cache_key(backend: str, model: str | None, name: str, instruction: str, n: int) -> dict:
    return {"backend": backend, "model": model, "class": name, "instruction": instruction, "n": n}


class PromptCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
        return self.folder / f"{slugify(key['class'])[:40]}-{digest[:16]}.json"

    def get(self, key: dict) -> list[str]:
        """The prompts stored under `key` (all of them, or those of an unfinished class); [] if none."""
        path = self.path(key)
        if not path.is_file():
            return []
        try:
            entry = parse_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("prompt cache file %s cannot be read (%s): asking again", path, exc.__class__.__name__)
            return []
        if not isinstance(entry, dict):
            entry = {}
        prompts = entry.get("prompts")
        if entry.get("key") != key or not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            logger.warning("prompt cache file %s does not hold prompts for this key: asking again", path)
            return []
        return prompts

    def put(self, key: dict, prompts: list[str], *, complete: bool) -> Path:
        path = self.path(key)
        atomic_write_json(path, {"key": key, "complete": complete, "prompts": list(prompts)})
        return path
