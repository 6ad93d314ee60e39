"""`synthshot run`: chain the stages of an experiment, skip what is already done, expand sweeps.

Each stage's fingerprint hashes the config keys it reads and the fingerprints of the stages it
reads from (both declared in `synthshot/stages/`). `run_stage` clears a stage's record in
`.synthshot/stages.json` when the stage starts and writes it only when the stage has ended with
its outputs complete, so a killed stage is never taken for a finished one. `run` skips a stage
whose record carries its current fingerprint and whose outputs are complete; the CLI verbs go
through `run_stage` too, so `run` after the verbs skips what they finished.

A config with `sweep: {dotted.key: [values], ...}` becomes one run per combination, each in its
own folder under `output_dir`. Runs whose images would be equal share one synthetic set under
`shared/`; a shots sweep tests every run on the images held out of its largest split. A run that
fails is recorded with its one-line error (`.synthshot/sweep.json`) and the others go on; the
sweep ends with its table and report, and with an error when any run failed.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from synthshot.config import RunConfig, apply_override, validate_config, write_resolved_config
from synthshot.errors import ConfigError, SynthshotError
from synthshot.experiment import STATE_FILE, Experiment, synthetic_set_name
from synthshot.io import MARKER, atomic_write_json, atomic_write_text, claim_folder, is_claimed, json_digest, parse_json, slugify

SHARED = "shared"


def _select(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _drop(tree: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def stage_fingerprints(exp: Experiment) -> dict[str, str]:
    """The fingerprint of every stage of the run, in pipeline order."""
    from synthshot.stages import STAGES

    tree = exp.config.model_dump(mode="json")
    prints: dict[str, str] = {}
    for name, stage in STAGES.items():
        own = {key: json.loads(json.dumps(_select(tree, key))) for key in stage.reads}
        for dotted in stage.ignores:  # a key inside a section the stage reads
            for key, value in own.items():
                if dotted.startswith(key + ".") and isinstance(value, dict):
                    _drop(value, dotted[len(key) + 1:])
        upstream = {dep: prints[dep] for dep in stage.after if dep in exp.config.stages}
        prints[name] = json_digest({"stage": name, "inputs": own, "upstream": upstream})
    return prints


# ---------------------------------------------------------------------------------- state
def read_state(out: Path) -> dict[str, dict]:
    try:
        state = parse_json((Path(out) / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _write_state(exp: Experiment, update) -> None:
    if not _is_main_process():
        return
    state = read_state(exp.layout.out)
    update(state)
    atomic_write_json(exp.layout.state_file, state)


def is_finished(exp: Experiment, name: str, fingerprint: str) -> bool:
    from synthshot.stages import STAGES

    record = read_state(exp.layout.out).get(name, {})
    return record.get("fingerprint") == fingerprint and STAGES[name].outputs_complete(exp)


def run_stage(exp: Experiment, name: str, *, echo=print, **options) -> Any:
    """Run one stage: its record is cleared first and written only once it ended with its
    outputs complete (a partial run, such as one shard of `generate`, leaves no record)."""
    from synthshot.stages import STAGES

    stage = STAGES[name]
    exp.claim_output()
    _write_state(exp, lambda state: state.pop(name, None))
    started = time.perf_counter()
    result = stage.run(exp, echo=echo, **options)
    if stage.outputs_complete(exp):
        fingerprint = stage_fingerprints(exp)[name]
        record = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - started, 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_state(exp, lambda state: state.__setitem__(name, record))
    return result


def run_stages(config: RunConfig | Experiment, *, force: bool = False, echo=print) -> list[str]:
    """Run the config's stages in pipeline order; return the names of those that ran. With
    `force`, every stage runs again (fine-tuning from scratch, its old run moved aside)."""
    from synthshot.stages import STAGES

    exp = config if isinstance(config, Experiment) else Experiment(config)
    exp.claim_output()
    write_resolved_config(exp.config, exp.layout.out)
    prints = stage_fingerprints(exp)
    ran = []
    for name in [s for s in STAGES if s in exp.config.stages]:
        if not force and is_finished(exp, name, prints[name]):
            echo(f"== {name} (done, skipped)")
            continue
        echo(f"== {name}")
        options = {"mode": "restart" if force else "auto"} if name == "finetune" else {}
        run_stage(exp, name, echo=echo, **options)
        ran.append(name)
    return ran


# --------------------------------------------------------------------------------------- sweeps
def expand_sweep(config: RunConfig) -> list[RunConfig]:
    """One config per combination of the sweep's values, each with its own output folder.

    Runs whose images would be equal share one synthetic set under `<output_dir>/shared/`; in a
    sweep over `data.shots`, `heldout` test sets leave out the largest split of the sweep. Two
    runs that would write to the same folder are an error.
    """
    if not config.sweep:
        return [config]
    base = config.model_dump(mode="json")
    base.pop("sweep")
    keys = list(config.sweep)
    for key in keys:
        values = config.sweep[key]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key} must be a non-empty list of values")
        if key.split(".")[0] in ("output_dir", "sweep", "stages", "synthetic_dir"):
            raise ConfigError(f"sweep.{key}: {key.split('.')[0]} cannot be swept")
    if "data.shots" in config.sweep and base["data"].get("holdout_shots") is None:
        shots = [v for v in config.sweep["data.shots"] if isinstance(v, int) and not isinstance(v, bool)]
        if shots:
            base["data"]["holdout_shots"] = max(shots)
    runs: list[RunConfig] = []
    names: dict[str, str] = {}
    for combo in itertools.product(*(config.sweep[k] for k in keys)):
        tree = json.loads(json.dumps(base))
        for key, value in zip(keys, combo):
            apply_override(tree, key.split("."), value)
        name = run_name(keys, combo)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, combo))
        if name in names or name == SHARED or name.startswith("."):
            raise ConfigError(
                f"sweep runs {names.get(name, 'shared')!r} and {label!r} would both write to "
                f"{Path(config.output_dir) / name}: make their values distinct"
            )
        names[name] = label
        tree["output_dir"] = str(Path(config.output_dir) / name)
        if tree["prompts"].get("cache_dir") is None:  # one LLM answer per class for the whole sweep
            tree["prompts"]["cache_dir"] = str(Path(config.output_dir) / SHARED / "prompts-cache")
        run = validate_config(tree, RunConfig, source=f"sweep run {label}")
        if run.synthetic_dir is None and "generate" in run.stages:
            shared = Path(config.output_dir) / SHARED / synthetic_set_name(run)
            run = run.model_copy(update={"synthetic_dir": shared})
        runs.append(run)
    return runs


def run_name(keys: list[str], values: tuple) -> str:
    parts = []
    for key, value in zip(keys, values):
        short = key.rsplit(".", 1)[-1]
        text = Path(str(value)).name if isinstance(value, str) and ("/" in value or "\\" in value) else str(value)
        parts.append(f"{slugify(short)}={slugify(text)}")
    return ",".join(parts)


def one_line(exc: BaseException) -> str:
    """A failure as one line: a synthshot error's own message, else the exception's type and text."""
    text = str(exc) if isinstance(exc, SynthshotError) else f"{exc.__class__.__name__}: {exc}"
    return " ".join(text.split()) or exc.__class__.__name__


class SweepFailed(SynthshotError):
    """Some runs of a sweep failed (each is recorded; the others finished)."""


def run(config: RunConfig, *, force: bool = False, echo=print) -> list[RunConfig]:
    """Run a config, or every run of its sweep followed by one table of their results."""
    runs = expand_sweep(config)
    if not config.sweep:
        run_stages(runs[0], force=force, echo=echo)
        return runs
    from synthshot.report.collect import SWEEP_STATUS  # where the report reads the runs' status

    sweep_dir = claim_folder(Path(config.output_dir), "sweep output folder (output_dir)")
    write_resolved_config(config, sweep_dir)
    status: dict[str, dict] = {}
    for index, one in enumerate(runs, 1):
        name = one.output_dir.name
        echo(f"=== run {index}/{len(runs)}: {name}")
        stages = [s for s in one.stages if s != "report"]
        started = time.perf_counter()
        try:
            run_stages(one.model_copy(update={"stages": stages}), force=force, echo=echo)
            status[name] = {"status": "done"}
        except Exception as exc:  # a sweep never dies at one run: record it, go on
            message = one_line(exc)
            status[name] = {"status": "failed", "error": message}
            # In the run's folder when it is synthshot's (a refused folder is never marked).
            log = (one.output_dir if is_claimed(one.output_dir) else sweep_dir / MARKER / name) / MARKER / "failure.txt"
            atomic_write_text(log, "".join(traceback.format_exception(exc)))
            echo(f"run {name} failed: {message} (traceback: {log})")
        status[name]["seconds"] = round(time.perf_counter() - started, 3)
        atomic_write_json(sweep_dir / SWEEP_STATUS, {"runs": status})
    echo(sweep_table(sweep_dir))
    failed = {name: s["error"] for name, s in status.items() if s["status"] == "failed"}
    if "report" in config.stages:
        from synthshot.report import write_report

        try:
            write_report(sweep_dir, echo=echo)
        except SynthshotError as exc:
            if not failed:
                raise
            echo(f"no report: {one_line(exc)}")
    if failed:
        first = next(iter(failed))
        raise SweepFailed(f"{len(failed)} of {len(runs)} sweep runs failed (first: {first}: {failed[first]}); the "
                          f"others finished; see {sweep_dir / SWEEP_STATUS}")
    return runs


def sweep_table(folder: Path) -> str:
    """One line per (run, method) with its test top-1, from every results.json under `folder`,
    and one line per failed run."""
    from synthshot.report.collect import failed_runs
    from synthshot.results import find_results, read_results

    rows = []
    for path in find_results(folder):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        data = read_results(path)
        for entry in data["results"]:
            if entry["split"] == "test":
                rows.append((path.parent.parent.name, entry["method"], f"{100 * entry['metrics']['top1']:6.2f}%"))
    rows += [(name, "FAILED", error) for name, error in failed_runs(folder).items()]
    if not rows:
        return f"no results under {folder} yet"
    width = max(len(r[0]) for r in rows)
    lines = [f"{'run':<{width}}  {'method':<12} test top-1"]
    lines += [f"{r:<{width}}  {m:<12} {acc}" for r, m, acc in rows]
    return "\n".join(lines)
