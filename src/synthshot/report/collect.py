"""Find the runs under an output folder and read what the report shows of them.

A run is a folder holding `results.json` (written by `evaluate` or `finetune`); its results are
every `results.json` at or below it, except those of its controls (`<run>/controls/<name>/`,
runs of their own beside it) and of its seeds (`<run>/seed=<n>/`, which the run's own results
summarise as mean and standard deviation). A folder without one is searched one level down, so an output
folder is either a single run or a sweep whose subfolders are runs (nested sweeps work the same
way). The parts a run may share with its sweep (the class similarity, the synthetic images and
their manifest, the resolved config) are looked up from the run folder upwards to the output
folder, nearest first.

Before any result exists (right after `generate`, when users look at the images), the runs are the
folders holding a stage record (`.synthshot/stages.json`), and the report shows their similarity
and images. Each run also carries its timings: the seconds of each stage (its own stage record,
or the mean over its seed runs'), its fine-tuning logs (`finetune/metrics.jsonl`) and the
rendering time of its synthetic set (`<set>/.synthshot/generation.json`, written by `generate`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthshot.errors import DataError
from synthshot.results import RESULTS_FILE, find_results, read_results
from synthshot.io import parse_json

REPORT_DIR = "report"
CONTROLS_DIR = "controls"  # a run's control runs (real-only, text-sd), reported beside it
SEED_FOLDER = re.compile(r"seed=-?\d+")  # a run's seed runs, summarised in the run's own results
CONFIG_FILE = "config.resolved.yaml"
SIMILARITY_DIR = "similarity"
MANIFEST_FILE = "manifest.jsonl"
STAGES_FILE = Path(".synthshot") / "stages.json"  # each finished stage's record (runs.py), with its seconds
GENERATION_TIMINGS = Path(".synthshot") / "generation.json"  # in a synthetic set: its rendering time
METRICS_FILE = Path("finetune") / "metrics.jsonl"
RESULT_STAGES = ("evaluate", "finetune")
# The run fields the accuracy table shows and the plots may vary along.
RUN_FIELDS = ("dataset", "shots", "images_per_class", "backbone")


@dataclass
class Entry:
    """One results entry (a method evaluated on a split) of one run."""

    run: str
    stage: str
    method: str
    split: str
    params: dict
    selected_on: str | None
    metrics: dict
    source: Path  # the results.json it came from

    @property
    def top1(self) -> float | None:
        return _number(self.metrics.get("top1"))

    @property
    def balanced_top1(self) -> float | None:
        return _number(self.metrics.get("balanced_top1"))


@dataclass
class Run:
    """A run folder and what the report reads from it."""

    name: str
    folder: Path
    info: dict[str, Any]  # the `run` block: name, dataset, shots, images_per_class, backbone
    entries: list[Entry] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    config_file: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    similarity_dir: Path | None = None  # holds similarity/similarity.safetensors
    images_dir: Path | None = None  # holds manifest.jsonl and synthetic/
    relative: str = "."  # the folder relative to the output folder
    stage_seconds: dict[str, float] = field(default_factory=dict)  # mean over its seed runs when it has some
    metrics_files: list[tuple[str, Path]] = field(default_factory=list)  # (seed label or "", metrics.jsonl)

    def params(self) -> dict[str, Any]:
        """What tells the run apart in a sweep: the RUN_FIELDS it records, the key=value parts of its
        folder (a sweep's other keys) and, for a control, which one."""
        found: dict[str, Any] = {key: self.info[key] for key in RUN_FIELDS if self.info.get(key) is not None}
        for part in Path(self.relative).parts:
            if SEED_FOLDER.fullmatch(part):
                continue
            for piece in part.split(","):
                key, sep, value = piece.partition("=")
                if sep and key:
                    found.setdefault(key, value)
        if self.info.get("control"):
            found["control"] = self.info["control"]
        return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _skipped(path: Path, out: Path) -> bool:
    """Files inside hidden folders or the report's own folder are not results."""
    parts = path.relative_to(out).parts[:-1]
    return any(part.startswith(".") for part in parts) or (parts[:1] == (REPORT_DIR,))


def _run_folders(folder: Path, results: list[Path]) -> list[Path]:
    """The run folders at or below `folder`, given every results file under it."""
    # A run keeps its results in itself or in its stage folders (evaluate/, finetune/).
    if any(folder / sub / RESULTS_FILE in results for sub in ("", *RESULT_STAGES)):
        controls = folder / CONTROLS_DIR
        below = [path for path in results if controls in path.parents]
        return [folder] + (_run_folders(controls, below) if below else [])
    children = sorted({folder / path.relative_to(folder).parts[0] for path in results if path.parent != folder})
    runs: list[Path] = []
    for child in children:
        runs += _run_folders(child, [path for path in results if child in path.parents])
    return runs


def _nearest(start: Path, out: Path, relative: str) -> Path | None:
    """The first folder from `start` up to `out` (both included) that holds `relative`."""
    for folder in (start, *start.parents):
        if (folder / relative).exists():
            return folder
        if folder == out:
            break
    return None


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path} is not readable YAML ({exc}): delete it and rerun the stage that wrote it") from None
    return data if isinstance(data, dict) else {}


def _own(path: Path, folder: Path) -> bool:
    """Whether the results file `path` belongs to the run in `folder`: at or below it, but not in
    its controls (runs of their own) or its seed runs (`seed=<n>/`, summarised in the run itself)."""
    if path.parent != folder and folder not in path.parents:
        return False
    first = path.relative_to(folder).parts[0]
    return first != CONTROLS_DIR and not SEED_FOLDER.fullmatch(first)


def _read_run(folder: Path, out: Path, results: list[Path]) -> Run:
    files = [path for path in results if _own(path, folder)]
    # The run's own results.json first, so its `run`, `config` and `versions` win.
    files.sort(key=lambda path: (path.parent != folder, str(path)))
    run = Run(name="", folder=folder, info={})
    loaded = [(path, read_results(path)) for path in files]
    for path, data in loaded:
        for key, value in (data.get("run") or {}).items():
            run.info.setdefault(key, value)
        if not run.config and isinstance(data.get("config"), dict):
            run.config = data["config"]
        for key, value in (data.get("versions") or {}).items():
            run.versions.setdefault(str(key), str(value))
    relative = folder.relative_to(out).as_posix()
    run.name = str(run.info.get("name") or (folder.name if relative == "." else relative))
    if folder.parent.name == CONTROLS_DIR:  # named after the run it controls
        run.info["control"] = folder.name
        run.name = relative
    for path, data in loaded:
        for number, item in enumerate(data["results"], start=1):
            if not isinstance(item, dict) or not isinstance(item.get("metrics"), dict):
                raise DataError(
                    f"{path} results entry {number} has no 'metrics' object: it was not written by synthshot; "
                    "rerun the stage that wrote it"
                )
            run.entries.append(
                Entry(
                    run=run.name,
                    stage=str(data.get("stage") or "?"),
                    method=str(item.get("method", "?")),
                    split=str(item.get("split", "?")),
                    params=item.get("params") if isinstance(item.get("params"), dict) else {},
                    selected_on=item.get("selected_on"),
                    metrics=item["metrics"],
                    source=path,
                )
            )
    config_folder = _nearest(folder, out, CONFIG_FILE)
    if config_folder is not None:
        run.config_file = config_folder / CONFIG_FILE
        if not run.config:
            run.config = _read_yaml(run.config_file)
    _read_shared_parts(run, folder, out)
    return run


def _read_shared_parts(run: Run, folder: Path, out: Path) -> None:
    """The parts a run may share with its sweep, and its timings."""
    run.relative = folder.relative_to(out).as_posix()
    similarity = _nearest(folder, out, f"{SIMILARITY_DIR}/similarity.safetensors")
    run.similarity_dir = similarity / SIMILARITY_DIR if similarity is not None else None
    run.images_dir = _synthetic_dir(run.config, folder, out) or _nearest(folder, out, MANIFEST_FILE)
    if run.images_dir is None:  # a set in the run's own folder, the config not written there (a verb alone)
        sets = sorted((p.parent for p in folder.glob(f"synthetic-*/{MANIFEST_FILE}")),
                      key=lambda p: (p / MANIFEST_FILE).stat().st_mtime_ns)
        run.images_dir = sets[-1] if sets else None
    seeds = sorted((p for p in folder.glob("seed=*") if p.is_dir() and SEED_FOLDER.fullmatch(p.name)),
                   key=lambda p: int(p.name.split("=", 1)[1]))
    records = [_stage_seconds(folder / STAGES_FILE)] if (folder / STAGES_FILE).is_file() else [
        _stage_seconds(seed / STAGES_FILE) for seed in seeds]
    records = [r for r in records if r]
    for stage in dict.fromkeys(name for record in records for name in record):
        values = [record[stage] for record in records if stage in record]
        run.stage_seconds[stage] = sum(values) / len(values)
    if (folder / METRICS_FILE).is_file():
        run.metrics_files = [("", folder / METRICS_FILE)]
    else:
        run.metrics_files = [(seed.name, seed / METRICS_FILE) for seed in seeds if (seed / METRICS_FILE).is_file()]


def _stage_seconds(path: Path) -> dict[str, float]:
    """stage -> seconds of a stage record file (nothing when it is unreadable)."""
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(name): float(record["seconds"]) for name, record in data.items()
            if isinstance(record, dict) and _number(record.get("seconds")) is not None}


def _synthetic_dir(config: dict, folder: Path, out: Path) -> Path | None:
    """The config's `synthetic_dir` (where generation wrote, if not in the run folder) when it
    holds a manifest; a relative one that does not resolve from here is looked for by its name in
    the run folder and beside it, up to the output folder (and in their `shared/`)."""
    value = config.get("synthetic_dir")
    if not value:
        return None
    given = Path(str(value))
    candidates = [given.resolve()]
    for above in (folder, *folder.parents):
        candidates += [above / given.name, above / "shared" / given.name]
        if above == out:
            break
    return next((c for c in candidates if (c / MANIFEST_FILE).is_file()), None)


def collect_runs(out: str | Path) -> list[Run]:
    """Every run under `out` (a single run or a sweep), in folder order; before any result, the
    runs that hold a stage record (see the module's notes).

    Raises DataError when `out` is not a folder or holds nothing to show.
    """
    out = Path(out).resolve()
    if not out.is_dir():
        raise DataError(f"{out} is not a folder: give the output folder of a run or a sweep")
    results = [path for path in find_results(out) if path.is_file() and not _skipped(path, out)]
    if results:
        runs = [_read_run(folder, out, results) for folder in _run_folders(out, results)]
    else:
        runs = [_read_bare_run(folder, out) for folder in _bare_run_folders(out)]
        if not any(run.images_dir or run.similarity_dir for run in runs):
            raise DataError(
                f"{out} holds no {RESULTS_FILE}, no synthetic images and no class similarity, so there is nothing "
                f"to report: results are written by the {' and '.join(RESULT_STAGES)} stages, images by generate; "
                "run `synthshot run CONFIG` with them in its `stages` first"
            )
    # Two runs that call themselves the same are told apart by their folders.
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.name} ({run.folder.relative_to(out).as_posix()})"
            for entry in run.entries:
                entry.run = run.name
    return runs


def _bare_run_folders(out: Path) -> list[Path]:
    """Runs without results: the folders holding a stage record, else the output folder itself."""
    found = []
    for record in sorted(out.rglob(STAGES_FILE.as_posix())):
        folder = record.parent.parent
        parts = folder.relative_to(out).parts
        if not any(part.startswith(".") for part in parts) and parts[:1] != (REPORT_DIR,):
            found.append(folder)
    return found or [out]


def _read_bare_run(folder: Path, out: Path) -> Run:
    """A run that has no results yet: what its config says it is."""
    relative = folder.relative_to(out).as_posix()
    run = Run(name=folder.name if relative == "." else relative, folder=folder, info={})
    config_folder = _nearest(folder, out, CONFIG_FILE)
    if config_folder is not None:
        run.config_file = config_folder / CONFIG_FILE
        run.config = _read_yaml(run.config_file)
    _read_shared_parts(run, folder, out)
    if not run.config and run.images_dir is not None and (run.images_dir / CONFIG_FILE).is_file():
        run.config_file = run.images_dir / CONFIG_FILE  # generate writes the config beside its images
        run.config = _read_yaml(run.config_file)
    config = run.config
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    generation = config.get("generation") if isinstance(config.get("generation"), dict) else {}
    models = config.get("models") if isinstance(config.get("models"), dict) else {}
    # The dataset's name as the run's results would give it: the one its split file is named after.
    split_names = sorted(p.name.split("_shot")[0] for p in (folder / "splits").glob("*_shot*_seed*.json"))
    dataset = data.get("dataset") or (split_names[0] if split_names else "demo" if data.get("demo") else None)
    if dataset:
        run.info["dataset"] = dataset
    for key, value in (("shots", data.get("shots")), ("images_per_class", generation.get("images_per_class")),
                       ("backbone", models.get("clip"))):
        if value is not None:
            run.info[key] = value
    if folder.parent.name == CONTROLS_DIR:
        run.info["control"] = folder.name
    return run


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


SWEEP_STATUS = Path(".synthshot") / "sweep.json"


RUN_STATUS_DIR = Path(".synthshot") / "runs"  # one file per task of a job array (`run --run-index`)


def failed_runs(out: str | Path) -> dict[str, str]:
    """run name -> its one-line error, for the runs the last sweep in `out` (or the tasks of its
    job array) recorded as failed; the newest record of a run wins."""
    candidates = [Path(out) / SWEEP_STATUS, *(Path(out) / RUN_STATUS_DIR).glob("*.json")]
    files = sorted((p for p in candidates if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    statuses: dict[str, dict] = {}
    for path in files:
        try:
            data = parse_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        runs = data.get("runs") if isinstance(data, dict) else None
        if isinstance(runs, dict):
            statuses.update({str(name): s for name, s in runs.items() if isinstance(s, dict)})
    return {name: str(s.get("error", "")) for name, s in statuses.items() if s.get("status") == "failed"}

