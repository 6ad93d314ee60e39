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
import logging
import json
import time
import traceback
from pathlib import Path
from typing import Any

from synthshot.config import RunConfig, apply_override, validate_config, write_resolved_config
from synthshot.distributed import is_main_process, launch, process_state
from synthshot.errors import ConfigError, SynthshotError
from synthshot.experiment import STATE_FILE, Experiment, synthetic_set_name
from synthshot.runlog import run_log
from synthshot.io import MARKER, atomic_write_json, atomic_write_text, claim_folder, is_claimed, json_digest, parse_json, slugify

logger = logging.getLogger(__name__)
SHARED = "shared"
SPLIT_STAGES = frozenset({"generate", "features", "finetune"})  # split between the processes of a launch
CONTROLS = "controls"


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


def _write_state(exp: Experiment, update) -> None:
    if not is_main_process():
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
    with run_log(exp.layout.out, echo) as echo:
        _write_state(exp, lambda state: state.pop(name, None))
        started = time.perf_counter()
        processes = process_state(exp.device) if launch().world > 1 else None
        if processes is None or name in SPLIT_STAGES:
            result = stage.run(exp, echo=echo, **options)
        else:  # a stage that is not split between processes: the main process runs it, the others wait
            result = stage.run(exp, echo=echo, **options) if processes.is_main_process else None
            processes.wait_for_everyone()
        logger.debug("stage %s took %.1f s", name, time.perf_counter() - started)
    if stage.outputs_complete(exp):
        fingerprint = stage_fingerprints(exp)[name]
        record = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - started, 3),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_state(exp, lambda state: state.__setitem__(name, record))
    return result


def run_stages(config: RunConfig | Experiment, *, force: bool = False, echo=print) -> list[str]:
    """Run the config's stages in pipeline order; return the names of those that ran. With
    `force`, every stage runs again (fine-tuning from scratch, its old run moved aside)."""
    exp = config if isinstance(config, Experiment) else Experiment(config)
    exp.claim_output()
    with run_log(exp.layout.out, echo) as echo:
        return _run_stages(exp, force=force, echo=echo)


def _run_stages(exp: Experiment, *, force: bool, echo) -> list[str]:
    from synthshot.stages import STAGES

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
        if "finetune.recipe" in keys:  # each run's recipe fills the keys the config leaves to it
            for key in config.finetune.recipe_keys:
                tree["finetune"].pop(key, None)
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


def seed_configs(run: RunConfig) -> list[RunConfig]:
    """The runs of `run.seeds`: one per seed in `<run>/seed=<n>`, with the seed and the split seed
    both set to it (new images and a new few-shot split each)."""
    members = []
    for seed in run.seeds or []:
        tree = run.model_dump(mode="json")
        tree.update(seeds=None, sweep=None, seed=seed, output_dir=str(Path(run.output_dir) / f"seed={seed}"),
                    synthetic_dir=None)
        tree["data"]["split_seed"] = seed
        member = validate_config(tree, RunConfig, source=f"seed {seed} of {run.output_dir}")
        if run.synthetic_dir is not None and Path(run.synthetic_dir).parent.name == SHARED:
            member = member.model_copy(update={"synthetic_dir": Path(run.synthetic_dir).parent / synthetic_set_name(member)})
        members.append(member)
    return members


def write_seed_summary(run: RunConfig) -> list[Path]:
    """Summarise the seed runs of `run` (and of each control) in `run`'s own stage folders: mean and
    standard deviation over the seeds that finished (see `results.aggregate_seeds`)."""
    from synthshot.results import RESULTS_FILE, aggregate_seeds, read_results, write_results

    written = []
    members = seed_configs(run)
    for sub in ["", *(f"{CONTROLS}/{name}" for name in run.controls)]:
        for stage in ("evaluate", "finetune"):
            found = {m.seed: Path(m.output_dir) / sub / stage / RESULTS_FILE for m in members}
            present = {seed: read_results(path) for seed, path in found.items() if path.is_file()}
            if present:
                written.append(write_results(Path(run.output_dir) / sub / stage, aggregate_seeds(present)))
    return written


def control_config(run: RunConfig, name: str) -> RunConfig:
    """The control `name` of a run, in `<run>/controls/<name>`: the same config but for what the
    control changes (DIPSY Table 2 reports both beside the method).

    - `real-only`: fine-tuning on the real images alone (finetune.lam=1, no synthetic image, the
      same recipe); no similarity, no generation.
    - `text-sd`: the images Stable Diffusion draws from the text prompt alone (generation.mode=text).
    """
    tree = run.model_dump(mode="json")
    tree.update(controls=[], sweep=None, output_dir=str(Path(run.output_dir) / CONTROLS / name), synthetic_dir=None)
    stages = [stage for stage in tree["stages"] if stage not in ("report", "similarity")]
    if name == "real-only":
        tree["finetune"]["lam"] = 1.0
        stages = [stage for stage in stages if stage not in ("prompts", "generate")]
    elif name == "text-sd":
        tree["generation"]["mode"] = "text"
    else:
        raise ConfigError(f"unknown control {name!r}: use real-only or text-sd")
    tree["stages"] = stages
    control = validate_config(tree, RunConfig, source=f"control {name} of {run.output_dir}")
    if name == "text-sd" and run.synthetic_dir is not None and Path(run.synthetic_dir).parent.name == SHARED:
        control = control.model_copy(update={"synthetic_dir": Path(run.synthetic_dir).parent / synthetic_set_name(control)})
    return control


def plan_runs(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """Every run a config makes, in the order `run` runs them, each with its folder relative to
    output_dir: the sweep's combinations (or the config itself), or each seed of each, each followed
    by its controls. `--list-runs` prints it; `--run-index K` runs its K-th entry alone."""
    out = Path(config.output_dir)
    runs = expand_sweep(config)
    planned = []
    for one in runs:
        for member in seed_configs(one) if one.seeds else [one]:
            folder = Path(member.output_dir).relative_to(out)
            planned.append((folder.as_posix(), member))
            planned += [((folder / CONTROLS / name).as_posix(), control_config(member, name)) for name in member.controls]
    return planned


def run(config: RunConfig, *, force: bool = False, echo=print, run_index: int | None = None) -> list[RunConfig]:
    """Run a config (and its controls), or every run of its sweep followed by one table of their
    results; with `run_index`, only that entry of `plan_runs` (one task of a job array)."""
    if run_index is not None:
        return [run_one(config, run_index, force=force, echo=echo)]
    runs = expand_sweep(config)
    if not config.sweep and not config.controls and not config.seeds:
        run_stages(runs[0], force=force, echo=echo)
        return runs
    if not config.sweep and not config.seeds:  # the method, its controls, then one report of them all
        main = runs[0]
        run_stages(main.model_copy(update={"stages": [s for s in main.stages if s != "report"]}), force=force, echo=echo)
        for name in main.controls:
            echo(f"=== control {name}")
            run_stages(control_config(main, name), force=force, echo=echo)
        if "report" in main.stages:
            run_stage(Experiment(main), "report", echo=echo)
        return runs
    from synthshot.report.collect import SWEEP_STATUS  # where the report reads the runs' status

    sweep_dir = claim_folder(Path(config.output_dir), "sweep output folder (output_dir)")
    if config.seeds and not config.sweep:
        runs = [config]  # the seed runs and their summary live in output_dir itself
    write_resolved_config(config, sweep_dir)
    status: dict[str, dict] = {}
    planned = plan_runs(config)
    for index, (name, one) in enumerate(planned, 1):
        echo(f"=== run {index}/{len(planned)}: {name}")
        status[name] = _run_recorded(one, name, sweep_dir, force=force, echo=echo)
        atomic_write_json(sweep_dir / SWEEP_STATUS, {"runs": status})
    for one in runs:
        if one.seeds:
            write_seed_summary(one)
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
        raise SweepFailed(f"{len(failed)} of {len(planned)} sweep runs failed (first: {first}: {failed[first]}); the "
                          f"others finished; see {sweep_dir / SWEEP_STATUS}")
    return runs


def _run_recorded(one: RunConfig, name: str, sweep_dir: Path, *, force: bool, echo) -> dict:
    """Run one run of a sweep without its report; return its status (done, or failed with its
    one-line error, the traceback kept in the run's `.synthshot/failure.txt`)."""
    started = time.perf_counter()
    try:
        run_stages(one.model_copy(update={"stages": [s for s in one.stages if s != "report"]}), force=force, echo=echo)
        status = {"status": "done"}
    except Exception as exc:  # a sweep never dies at one run: record it, go on
        message = one_line(exc)
        status = {"status": "failed", "error": message}
        # In the run's folder when it is synthshot's (a refused folder is never marked).
        log = (one.output_dir if is_claimed(one.output_dir) else sweep_dir / MARKER / name) / MARKER / "failure.txt"
        atomic_write_text(log, "".join(traceback.format_exception(exc)))
        echo(f"run {name} failed: {message} (traceback: {log})")
    status["seconds"] = round(time.perf_counter() - started, 3)
    return status


def run_one(config: RunConfig, index: int, *, force: bool = False, echo=print) -> RunConfig:
    """Run entry `index` of `plan_runs(config)` alone, as one task of a job array (SLURM, an indexed
    Kubernetes job): its status goes to `<output_dir>/.synthshot/runs/<index>.json`, shared synthetic
    sets are locked while a task writes them, and a seed summary is written once all its seeds are
    there. `synthshot report OUTPUT_DIR` gathers the tasks at the end."""
    from synthshot.report.collect import RUN_STATUS_DIR

    planned = plan_runs(config)
    if not 0 <= index < len(planned):
        raise ConfigError(f"--run-index {index} does not exist: this config has runs 0 to {len(planned) - 1} "
                          "(see --list-runs)")
    name, one = planned[index]
    sweep_dir = claim_folder(Path(config.output_dir), "sweep output folder (output_dir)")
    write_resolved_config(config, sweep_dir)
    echo(f"=== run {index + 1}/{len(planned)}: {name}")
    status = _run_recorded(one, name, sweep_dir, force=force, echo=echo)
    atomic_write_json(sweep_dir / RUN_STATUS_DIR / f"{index}.json", {"runs": {name: status}})
    for group in expand_sweep(config) if config.sweep else [config]:
        members = seed_configs(group) if group.seeds else []
        if members and all(is_finished_run(m) for m in members):
            write_seed_summary(group)
    if status["status"] == "failed":
        raise SweepFailed(f"run {name} failed: {status['error']}")
    return one


def is_finished_run(one: RunConfig) -> bool:
    """Whether the run (and its controls) wrote the results of its evaluating stages."""
    from synthshot.results import RESULTS_FILE

    folders = [Path(one.output_dir), *(Path(one.output_dir) / CONTROLS / name for name in one.controls)]
    stages = [s for s in ("evaluate", "finetune") if s in one.stages]
    return all((folder / stage / RESULTS_FILE).is_file() for folder in folders for stage in stages)


def sweep_table(folder: Path) -> str:
    """One line per (run, method) with its test top-1 (mean ± std over seeds where the run has
    several), and one line per failed run."""
    from synthshot.report.collect import collect_runs, failed_runs

    rows = []
    try:
        runs = collect_runs(folder)
    except SynthshotError:
        runs = []
    for one in runs:
        for entry in one.entries:
            if entry.split == "test" and entry.top1 is not None:
                spread = entry.metrics.get("top1_std")
                text = f"{100 * entry.top1:6.2f}%" + (f" ± {100 * spread:.2f}" if spread is not None else "")
                rows.append((one.name, entry.method, text))
    rows += [(name, "FAILED", error) for name, error in failed_runs(folder).items()]
    if not rows:
        return f"no results under {folder} yet"
    width = max(len(r[0]) for r in rows)
    lines = [f"{'run':<{width}}  {'method':<12} test top-1"]
    lines += [f"{r:<{width}}  {m:<12} {acc}" for r, m, acc in rows]
    return "\n".join(lines)
