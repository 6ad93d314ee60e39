"""`synthshot run`: chain the stages of an experiment, skip what is already done, expand sweeps.

Each stage records, when it finishes, a fingerprint of what it was made from: the config
sections it reads and the fingerprints of the stages it reads from. A rerun skips a stage whose
fingerprint is unchanged and whose outputs are there, so after a crash or an edit only what is
needed runs again (and stages that resume, such as generation, resume inside themselves).

A config with `sweep: {dotted.key: [values], ...}` becomes one run per combination, each in its
own folder under `output_dir`. Runs that differ only in what generation does not depend on (the
number of images per class, λ, the backbone) share one synthetic set: more images per class
extend the set instead of starting over.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthshot.config import STAGES, RunConfig, apply_override, validate_config, write_resolved_config
from synthshot.errors import ConfigError
from synthshot.io import atomic_write_json, slugify

STATE_FILE = Path(".synthshot") / "stages.json"
SHARED = "shared"

# The config keys each stage reads (dotted prefixes), and the stages whose outputs it reads.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "prompts": ("prompts", "data.dataset"),
    "similarity": ("similarity", "models.clip", "models.tiny_kit"),
    "generate": ("generation", "models", "seed", "similarity.sampling", "synthetic_dir"),
    "features": ("features", "models.clip", "models.tiny_kit", "classifier.test", "classifier.val", "seed",
                 "generation.images_per_class"),
    "prototypes": ("classifier.score",),
    "finetune": ("finetune", "models.clip", "models.tiny_kit", "seed", "generation.images_per_class"),
    "evaluate": ("classifier",),
    "report": (),
}
STAGE_DEPENDS: dict[str, tuple[str, ...]] = {
    "data": (),
    "prompts": ("data",),
    "similarity": ("data",),
    "generate": ("data", "prompts", "similarity"),
    "features": ("data", "generate"),
    "prototypes": ("features",),
    "finetune": ("data", "generate"),
    "evaluate": ("features", "prototypes"),
    "report": ("similarity", "generate", "evaluate", "finetune"),
}


def _select(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_fingerprints(config: RunConfig) -> dict[str, str]:
    """The fingerprint of every stage of the run, in pipeline order."""
    tree = config.model_dump(mode="json")
    prints: dict[str, str] = {}
    for stage in STAGES:
        own = {key: _select(tree, key) for key in STAGE_INPUTS[stage]}
        upstream = {dep: prints[dep] for dep in STAGE_DEPENDS[stage] if dep in config.stages}
        prints[stage] = _digest({"stage": stage, "inputs": own, "upstream": upstream})
    return prints


def read_state(out: Path) -> dict[str, dict]:
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def _outputs_present(config: RunConfig, stage: str) -> bool:
    """Whether the files a finished stage leaves are still there (a user may have deleted them)."""
    from synthshot import stages

    out = config.output_dir
    checks: dict[str, Callable[[], bool]] = {
        "data": lambda: config.data.shots == 0 or (out / "splits").is_dir(),
        "prompts": lambda: stages.prompts_file(config).is_file(),
        "similarity": lambda: (stages.similarity_dir(config) / "similarity.safetensors").is_file(),
        "generate": lambda: (stages.synthetic_root(config) / "manifest.jsonl").is_file(),
        "features": lambda: (out / "features").is_dir(),
        "prototypes": lambda: (out / "prototypes" / "prototypes.safetensors").is_file(),
        "finetune": lambda: (out / "finetune" / "results.json").is_file(),
        "evaluate": lambda: (out / "evaluate" / "results.json").is_file(),
        "report": lambda: (out / "report" / "index.html").is_file(),
    }
    return checks[stage]()


def stage_functions() -> dict[str, Callable]:
    """stage name -> function(config, echo=...), imported only when a run starts."""
    from synthshot import stages
    from synthshot.classify import evaluate

    def finetune(config, echo=print):
        from synthshot.classify.finetune import finetune as train

        return train(config, resume=True, echo=echo)

    def report(config, echo=print):
        from synthshot.report import write_report

        return write_report(config.output_dir, echo=echo)

    return {
        "data": stages.prepare_data,
        "prompts": stages.write_prompts,
        "similarity": stages.compute_similarity,
        "generate": stages.generate,
        "features": evaluate.compute_features,
        "prototypes": lambda config, echo=print: evaluate.build_prototypes(config, echo=echo),
        "finetune": finetune,
        "evaluate": evaluate.evaluate,
        "report": report,
    }


def run_stages(config: RunConfig, *, force: bool = False, echo=print) -> list[str]:
    """Run the config's stages in pipeline order; return the names of those that ran."""
    from synthshot.stages import resolve_models

    config = resolve_models(config)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, out)
    prints = stage_fingerprints(config)
    state = read_state(out)
    functions = stage_functions()
    ran = []
    for stage in [s for s in STAGES if s in config.stages]:
        done = state.get(stage, {})
        if not force and done.get("fingerprint") == prints[stage] and _outputs_present(config, stage):
            echo(f"== {stage} (done, skipped)")
            continue
        echo(f"== {stage}")
        started = time.perf_counter()
        functions[stage](config, echo=echo)
        state[stage] = {
            "fingerprint": prints[stage],
            "seconds": round(time.perf_counter() - started, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(out / STATE_FILE, state)
        ran.append(stage)
    return ran


# --------------------------------------------------------------------------------------- sweeps
def expand_sweep(config: RunConfig) -> list[RunConfig]:
    """One config per combination of the sweep's values, each with its own output folder.

    Runs whose generation inputs are equal share one synthetic set under `<output_dir>/shared/`;
    two runs that would write to the same folder are an error.
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
        if key.split(".")[0] in ("output_dir", "sweep", "stages"):
            raise ConfigError(f"sweep.{key}: {key.split('.')[0]} cannot be swept")
    runs: list[RunConfig] = []
    names: dict[str, str] = {}
    for combo in itertools.product(*(config.sweep[k] for k in keys)):
        tree = json.loads(json.dumps(base))
        for key, value in zip(keys, combo):
            apply_override(tree, key.split("."), value)
        name = run_name(keys, combo)
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, combo))
        if name in names or name == SHARED:
            raise ConfigError(
                f"sweep runs {names.get(name, 'shared')!r} and {label!r} would both write to "
                f"{Path(config.output_dir) / name}: make their values distinct"
            )
        names[name] = label
        tree["output_dir"] = str(Path(config.output_dir) / name)
        if tree["prompts"].get("cache_dir") is None:  # one LLM answer per class for the whole sweep
            tree["prompts"]["cache_dir"] = str(Path(config.output_dir) / SHARED / "prompts-cache")
        run = validate_config(tree, RunConfig, source=f"sweep run {label}")
        runs.append(_share_synthetic(run, Path(config.output_dir)))
    return runs


def run_name(keys: list[str], values: tuple) -> str:
    parts = []
    for key, value in zip(keys, values):
        short = key.rsplit(".", 1)[-1]
        text = Path(str(value)).name if isinstance(value, str) and ("/" in value or "\\" in value) else str(value)
        parts.append(f"{slugify(short)}={slugify(text)}")
    return ",".join(parts)


def _share_synthetic(run: RunConfig, sweep_dir: Path) -> RunConfig:
    """Point a run at the shared synthetic set of every run with the same generation inputs."""
    if "generate" not in run.stages or run.synthetic_dir is not None:
        return run
    tree = run.model_dump(mode="json")
    keys = ["generation", "seed", "data", "models.diffusion", "models.ip_adapter", "models.ip_adapter_subfolder",
            "models.ip_adapter_weights", "models.image_encoder", "models.image_encoder_subfolder", "models.tiny_kit",
            "models.revision"]
    if "prompts" in run.stages or run.generation.prompts_file is not None:
        keys.append("prompts")
    if run.generation.mode == "dual" and run.similarity.sampling == "similarity":
        keys += ["similarity", "models.clip"]  # the negatives are drawn from the CLIP similarity
    inputs = {key: _select(tree, key) for key in keys}
    inputs["generation"] = {k: v for k, v in inputs["generation"].items() if k != "images_per_class"}
    return run.model_copy(update={"synthetic_dir": sweep_dir / SHARED / f"synthetic-{_digest(inputs)[:12]}"})


def run(config: RunConfig, *, force: bool = False, echo=print) -> list[RunConfig]:
    """Run a config, or every run of its sweep followed by one table of their results."""
    runs = expand_sweep(config)
    if len(runs) == 1 and not config.sweep:
        run_stages(runs[0], force=force, echo=echo)
        return runs
    sweep_dir = Path(config.output_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, sweep_dir)
    for index, one in enumerate(runs, 1):
        echo(f"=== run {index}/{len(runs)}: {one.output_dir.name}")
        stages = [s for s in one.stages if s != "report"]
        run_stages(one.model_copy(update={"stages": stages}), force=force, echo=echo)
    echo(sweep_table(sweep_dir))
    if "report" in config.stages:
        from synthshot.report import write_report

        write_report(sweep_dir, echo=echo)
    return runs


def sweep_table(folder: Path) -> str:
    """One line per (run, method) with its test top-1, from every results.json under `folder`."""
    from synthshot.results import find_results, read_results

    rows = []
    for path in find_results(folder):
        data = read_results(path)
        for entry in data["results"]:
            if entry["split"] == "test":
                rows.append((path.parent.parent.name, entry["method"], 100 * entry["metrics"]["top1"]))
    if not rows:
        return f"no results under {folder} yet"
    width = max(len(r[0]) for r in rows)
    lines = [f"{'run':<{width}}  {'method':<12} test top-1"]
    lines += [f"{r:<{width}}  {m:<12} {acc:6.2f}%" for r, m, acc in rows]
    return "\n".join(lines)
