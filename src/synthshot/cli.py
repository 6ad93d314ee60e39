"""The `synthshot` command line: one verb per stage, plus `run` for a whole experiment.

Start-up stays fast: heavy libraries are imported inside the verbs that need them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from synthshot import __version__
from synthshot.datasets.cli import datasets_app  # typer only: the verbs import the rest
from synthshot.errors import SynthshotError

app = typer.Typer(
    name="synthshot",
    help="Synthetic images and CLIP classifiers from class names and a few labelled images (DIPSY, LGCLIP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model utilities: the offline tiny model kit.", no_args_is_help=True)
data_app = typer.Typer(help="Few-shot data: splits and summaries.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(datasets_app, name="datasets")

ConfigArg = Annotated[Optional[Path], typer.Argument(help="YAML config; defaults apply where it is silent.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config value: key.path=value (repeatable), e.g. generation.steps=20."),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never touch the network (HF_HUB_OFFLINE).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Output folder (output_dir).")]


def load(config: Optional[Path], overrides: Optional[list[str]], offline: bool, output: Optional[Path] = None):
    """Resolve the config and set up offline mode before any model library is imported."""
    from synthshot.config import load_config
    from synthshot.models.hub import set_offline

    extra = list(overrides or [])
    if offline:
        extra.append("offline=true")
    if output is not None:
        extra.append(f"output_dir={output}")
    resolved = load_config(config, extra)
    set_offline(resolved.offline)
    return resolved


def run_verb(stage: str, config, **options) -> None:
    """Run one stage as `run` would (the same function, and its record written when it ends)."""
    from synthshot.experiment import Experiment
    from synthshot.runs import run_stage

    run_stage(Experiment(config), stage, echo=typer.echo, **options)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment config (YAML) or a preset name (synthshot presets).")],
    set_: SetOpt = None,
    offline: OfflineOpt = False,
    output: OutputOpt = None,
    force: Annotated[bool, typer.Option(help="Rerun stages even when their outputs are up to date.")] = False,
    list_runs: Annotated[bool, typer.Option("--list-runs", help="Print the runs (index and folder) and exit.")] = False,
    run_index: Annotated[Optional[int], typer.Option(
        "--run-index", help="Run only run K of --list-runs (one task of a job array); then `synthshot report`.")] = None,
) -> None:
    """Run the stages the config lists in one output folder (or every run of its sweep); stages
    whose outputs are complete and whose inputs are unchanged are skipped."""
    from synthshot.runs import plan_runs
    from synthshot.runs import run as run_all

    resolved = load(config, set_, offline, output)
    if list_runs:
        for index, (name, _) in enumerate(plan_runs(resolved)):
            typer.echo(f"{index}\t{name}")
        return
    run_all(resolved, force=force, echo=typer.echo, run_index=run_index)


@app.command()
def presets() -> None:
    """List the presets (paper settings per dataset) that `run` and `preset:` accept."""
    from synthshot.config import PRESETS_DIR, list_presets, read_yaml

    for name in list_presets():
        first = (PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        read_yaml(PRESETS_DIR / f"{name}.yaml")
        typer.echo(f"{name:<24} {first}")


@app.command()
def prompts(config: ConfigArg = None, set_: SetOpt = None, offline: OfflineOpt = False,
            output: OutputOpt = None) -> None:
    """Write N prompts per class (registry templates or an LLM, cached) to prompts/prompts.json."""
    run_verb("prompts", load(config, set_, offline, output))


@app.command()
def features(config: ConfigArg = None, set_: SetOpt = None, offline: OfflineOpt = False,
             output: OutputOpt = None) -> None:
    """CLIP image features (single- or multi-scale) of the synthetic, few-shot and test images, cached."""
    run_verb("features", load(config, set_, offline, output))


@app.command("prototypes")
def build_prototypes(config: ConfigArg = None, set_: SetOpt = None, offline: OfflineOpt = False,
                     output: OutputOpt = None) -> None:
    """Per-class prototypes: the mean CLIP feature of each class's synthetic images."""
    run_verb("prototypes", load(config, set_, offline, output))


@app.command()
def evaluate(config: ConfigArg = None, set_: SetOpt = None, offline: OfflineOpt = False,
             output: OutputOpt = None) -> None:
    """Test accuracy of the training-free classifiers (prototypes, text, combined, Tip-Adapter)."""
    run_verb("evaluate", load(config, set_, offline, output))


@data_app.command("split")
def data_split(config: ConfigArg = None, set_: SetOpt = None, output: OutputOpt = None) -> None:
    """Build the few-shot split (seeded, nested across shot counts) and print its summary."""
    run_verb("data", load(config, set_, False, output))


@data_app.command("summary")
def data_summary(split: Annotated[Path, typer.Argument(help="A split JSON (class -> files).")]) -> None:
    """Print the summary table of a saved split."""
    from synthshot.data.fewshot import load_split, summarize_split

    typer.echo(summarize_split(load_split(split)))


@app.command()
def similarity(config: ConfigArg = None, set_: SetOpt = None, offline: OfflineOpt = False,
               output: OutputOpt = None) -> None:
    """Class similarity from CLIP image embeddings and the negative-class distribution."""
    run_verb("similarity", load(config, set_, offline, output))


@app.command()
def generate(
    config: ConfigArg = None,
    set_: SetOpt = None,
    offline: OfflineOpt = False,
    output: OutputOpt = None,
    shard: Annotated[Optional[str], typer.Option(help="Only this part of the work: i/n (0 <= i < n).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="dual, single or text (generation.mode).")] = None,
) -> None:
    """Generate synthetic images (resumable; `accelerate launch` splits the work across GPUs)."""
    from synthshot.generation.items import parse_shard

    overrides = list(set_ or []) + ([f"generation.mode={mode}"] if mode else [])
    run_verb("generate", load(config, overrides, offline, output), shard=parse_shard(shard) if shard else None)


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="Output folder of a run or a sweep.")],
    max_grid_items: Annotated[int, typer.Option(help="Synthetic items shown per image grid.")] = 12,
) -> None:
    """Write FOLDER/report/index.html: accuracy table and plots, similarity, image grids, config
    (FOLDER: the output folder of a run or a sweep)."""
    from synthshot.report import write_report

    write_report(folder, max_grid_items=max_grid_items, echo=typer.echo)


@app.command()
def finetune(
    config: ConfigArg = None,
    set_: SetOpt = None,
    offline: OfflineOpt = False,
    output: OutputOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Only continue the earlier run in <output>/finetune "
                                         "(an error if its settings or data changed).")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Move an earlier run aside and train anew.")] = False,
) -> None:
    """Fine-tune CLIP with LoRA on the real shots and the synthetic images (`accelerate launch` for several GPUs).

    An earlier run in the same folder is continued when its settings and data are the same, else
    moved aside (a line says where) and trained anew."""
    if resume and restart:
        raise typer.BadParameter("--resume and --restart exclude each other")
    mode = "resume" if resume else "restart" if restart else "auto"
    run_verb("finetune", load(config, set_, offline, output), mode=mode)


@models_app.command("make-tiny")
def make_tiny(
    folder: Annotated[Path, typer.Argument(help="Where to write the kit.")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights (same seed, same bytes).")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing kit.")] = False,
) -> None:
    """Write tiny models with the real architectures (SD 1.5 pipeline, IP-Adapters, CLIP), offline."""
    from synthshot.models.tiny import make_tiny_kit

    typer.echo(f"tiny model kit: {make_tiny_kit(folder, seed, overwrite=overwrite)}")


@app.command("config")
def show_config(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults, file and overrides) as YAML."""
    from synthshot.config import dump_config

    typer.echo(dump_config(load(config, set_, False)), nl=False)


@app.command()
def version() -> None:
    """Print the synthshot version."""
    typer.echo(__version__)


class _OneLineFormatter(logging.Formatter):
    """Log messages with control characters escaped: a class name or path with a newline or an
    escape sequence can neither split a message nor drive the terminal (tracebacks keep theirs)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from synthshot.io import one_line

        return one_line(super().formatMessage(record))


def _quiet_libraries() -> None:
    """Our own messages at INFO; the model libraries' chatter (progress bars, deprecation notes) off."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("transformers", "diffusers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    _quiet_libraries()
    try:
        # Without standalone mode click returns a command's exit code (typer.Exit) instead of exiting.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except SynthshotError as exc:
        from synthshot.io import one_line

        typer.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to resume; finished work is kept", err=True)
        sys.exit(130)
    except Exception as exc:  # click's usage errors carry their own exit code
        for exceptions in _click_exception_modules():
            if isinstance(exc, exceptions.ClickException):
                exc.show()
                sys.exit(exc.exit_code)
            if isinstance(exc, exceptions.Exit):
                sys.exit(exc.exit_code)
            if isinstance(exc, exceptions.Abort):
                sys.exit(1)
        raise


def _click_exception_modules() -> list:
    """click's exceptions, and those of the copy of click that newer typer versions carry inside
    (`typer._click`), whose usage errors are not click's classes."""
    import click

    modules = [click.exceptions]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        return modules
    return modules + [vendored]


if __name__ == "__main__":
    main()
