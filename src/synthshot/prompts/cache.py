"""On-disk cache of LLM prompts: one JSON file per (backend, model, class, instruction, N), written
atomically after every answer, so a rerun asks nothing for finished classes and resumes a class
from the prompts it already has. Each file also records the sampling seed of every request made
for the class, so a rerun goes on with new seeds instead of repeating the answers it had."""

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
        return self.load(key)[0]

    def load(self, key: dict) -> tuple[list[str], list[int]]:
        """The prompts stored under `key` and the seeds of the requests that wrote them."""
        path = self.path(key)
        if not path.is_file():
            return [], []
        try:
            entry = parse_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("prompt cache file %s cannot be read (%s): asking again", path, exc.__class__.__name__)
            return [], []
        if not isinstance(entry, dict):
            entry = {}
        prompts = entry.get("prompts")
        if entry.get("key") != key or not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            logger.warning("prompt cache file %s does not hold prompts for this key: asking again", path)
            return [], []
        seeds = entry.get("seeds")
        if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            seeds = []  # written before seeds were recorded
        return prompts, seeds

    def put(self, key: dict, prompts: list[str], *, complete: bool, seeds: list[int] = ()) -> Path:
        path = self.path(key)
        atomic_write_json(path, {"key": key, "complete": complete, "prompts": list(prompts), "seeds": list(seeds)})
        return path
