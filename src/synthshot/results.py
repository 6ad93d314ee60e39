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

A run with `seeds: [...]` writes one results.json per seed (`seed=<n>/`) and, in the run's own
stage folders, their summary (`aggregate_seeds`): each entry's top-1 and balanced top-1 as the
mean over the seeds with `top1_std` / `balanced_top1_std` (sample standard deviation) and
`per_seed`, the per-class accuracies averaged and the confusion matrices summed.
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


def aggregate_seeds(per_seed: dict[int, dict]) -> dict[str, Any]:
    """One results dict summarising the results of the same run made with several seeds: each
    (method, split) entry found in every seed, with its metrics' mean and sample standard deviation
    over the seeds. `per_seed` maps each seed to that seed's results dict (same stage)."""
    import numpy as np

    if not per_seed:
        raise ValueError("no results to aggregate")
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]

    def key(entry: dict) -> tuple[str, str]:
        return str(entry.get("method")), str(entry.get("split"))

    found = [{key(entry): entry for entry in per_seed[seed]["results"]} for seed in seeds]
    entries = []
    for name in [key(entry) for entry in first["results"]]:
        if not all(name in seen for seen in found):
            continue  # reported only when every seed has it
        group = [seen[name] for seen in found]
        metrics = [entry["metrics"] for entry in group]
        summary: dict[str, Any] = {}
        for field in ("top1", "balanced_top1"):
            values = np.array([float(m[field]) for m in metrics])
            summary[field] = float(values.mean())
            summary[f"{field}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary["per_seed"] = {str(seed): float(m["top1"]) for seed, m in zip(seeds, metrics)}
        counts = {m.get("num_images") for m in metrics}
        summary["num_images"] = counts.pop() if len(counts) == 1 else float(np.mean([m["num_images"] for m in metrics]))
        classes = metrics[0].get("classes")
        if classes and all(m.get("classes") == classes for m in metrics):
            summary["classes"] = classes
            per_class = {}
            for name_ in classes:
                values = [m["per_class"].get(name_) for m in metrics if isinstance(m.get("per_class"), dict)]
                values = [v for v in values if v is not None]
                per_class[name_] = float(np.mean(values)) if values else None
            summary["per_class"] = per_class
            if all(isinstance(m.get("confusion"), list) for m in metrics):
                summary["confusion"] = np.sum([np.array(m["confusion"]) for m in metrics], axis=0).tolist()
            if all(isinstance(m.get("support"), dict) for m in metrics):
                summary["support"] = {n: int(sum(m["support"].get(n, 0) for m in metrics)) for n in classes}
        common = {k: v for k, v in group[0].get("params", {}).items()
                  if all(entry.get("params", {}).get(k) == v for entry in group)}
        selected = {entry.get("selected_on") for entry in group}
        entries.append({"method": name[0], "split": name[1], "params": {**common, "seeds": seeds},
                        "selected_on": selected.pop() if len(selected) == 1 else None, "metrics": summary})
    run = {k: v for k, v in (first.get("run") or {}).items() if k not in ("test_set", "name")}
    run["seeds"] = seeds
    config = dict(first.get("config") or {})
    return make_results(str(first.get("stage") or "?"), entries, run=run, config=config)
