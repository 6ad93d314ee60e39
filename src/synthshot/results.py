"""`results.json`: the one format every evaluating stage writes and the report reads.

    {
      "synthshot_version": "0.1.0",
      "stage": "evaluate" | "finetune",
      "created": "2026-11-22T10:00:00+00:00",
      "run": {"name": ..., "dataset": ..., "shots": ..., "images_per_class": ..., "backbone": ...,
              "test_set": {"source": ..., "num_images": ..., "digest": ...}},
      "results": [
        {"method": "prototypes" | "text" | "combined" | "tip_adapter" | "finetune" | ...,
         "split": "test" | "val",
         "params": {...},              # what the method used (weights, alpha/beta, epochs, ...)
         "selected_on": "val" | null,  # where hyper-parameters or the checkpoint were chosen
         "metrics": classification_metrics(...)}
      ],
      "config": {... the resolved RunConfig ...},
      "versions": {"torch": ..., "transformers": ..., ...}
    }

Entries are appended per (method, split); the test split is reported, never used to choose.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from synthshot import __version__
from synthshot.errors import DataError
from synthshot.io import atomic_write_json, parse_json

RESULTS_FILE = "results.json"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers (only those already importable)."""
    from importlib import metadata

    versions = {"synthshot": __version__}
    for package in ("torch", "transformers", "diffusers", "peft", "accelerate", "open_clip_torch", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def make_results(
    stage: str, entries: list[dict], *, run: dict | None = None, config: dict | None = None,
    skipped: list[dict] | None = None,
) -> dict[str, Any]:
    for entry in entries:
        missing = {"method", "split", "metrics"} - set(entry)
        if missing:
            raise ValueError(f"results entry lacks {sorted(missing)}")
        entry.setdefault("params", {})
        entry.setdefault("selected_on", None)
    return {
        "synthshot_version": __version__,
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run or {},
        "results": entries,
        "skipped": list(skipped or []),  # [{"method": ..., "reason": ...}]: methods that could not run
        "config": config or {},
        "versions": library_versions(),
    }


def write_results(path: str | Path, results: dict) -> Path:
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path = path / RESULTS_FILE
    atomic_write_json(path, results)
    return path


def read_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"results file {path} is not valid JSON (line {exc.lineno}): delete it and rerun the stage") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise DataError(f"results file {path} has no 'results' list: it was not written by synthshot")
    return data


def find_results(folder: str | Path) -> list[Path]:
    """Every results.json under `folder` (a run or a sweep), sorted."""
    return sorted(Path(folder).rglob(RESULTS_FILE))
