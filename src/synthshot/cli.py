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
import typer.core

from synthshot import __version__
from synthshot.datasets.cli import datasets_app  # typer only: the verbs import the rest
from synthshot.errors import SynthshotError

# `--help` lists the verbs in the order of the pipeline, then an example of each in that order.
VERB_EXAMPLES = (
    ("run", "run examples/quickstart.yaml", "every stage (or a preset)"),
    ("presets", "presets", "the paper settings"),
    ("config", "config dipsy-dtd --set data.shots=4", "the resolved config"),
    ("data", "data split my.yaml", "the few-shot split"),
    ("prompts", "prompts my.yaml", "class prompts"),
    ("similarity", "similarity my.yaml", "class similarity"),
    ("generate", "generate my.yaml --shard 0/4", "a quarter of the images"),
    ("features", "features my.yaml", "CLIP features, cached"),
    ("prototypes", "prototypes my.yaml", "per-class prototypes"),
    ("finetune", "finetune my.yaml --resume", "CLIP + LoRA"),
    ("evaluate", "evaluate my.yaml", "training-free classifiers"),
    ("report", "report runs/quickstart", "the HTML report"),
    ("predict", "predict runs/quickstart photos/", "classify new images"),
    ("export", "export runs/quickstart -o clf", "a standalone classifier"),
    ("datasets", "datasets prepare dtd --root data", "benchmark datasets"),
    ("models", "models make-tiny runs/tiny-kit", "the tiny model kit"),
    ("version", "version", "the version"),
)
EXAMPLES = "Examples, in pipeline order:\n\n\b\n" + "\n".join(
    f"synthshot {example:<36} {what}" for _, example, what in VERB_EXAMPLES
)


class _PipelineOrder(typer.core.TyperGroup):
    """Lists the verbs in VERB_EXAMPLES' order (pipeline order); any other verb after them."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        order = [verb for verb, _, _ in VERB_EXAMPLES]
        return [n for n in order if n in names] + [n for n in names if n not in order]


app = typer.Typer(
    name="synthshot",
    help="Synthetic images and CLIP classifiers from class names and a few labelled images (DIPSY, LGCLIP).",
    cls=_PipelineOrder,
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Model utilities: the offline tiny model kit.", no_args_is_help=True)
data_app = typer.Typer(help="Few-shot data: splits and summaries.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(datasets_app, name="datasets")

_CONSOLE = {"quiet": False}


def say(message: str = "") -> None:
    """A console line of the run (left out with -q; run.log keeps it either way)."""
    if not _CONSOLE["quiet"]:
        typer.echo(message)


@app.callback()
def _console_options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on the console.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug detail on the console too.")] = False,
) -> None:
    """Synthetic images and CLIP classifiers from class names and a few labelled images. Every
    output folder also gets run.log: the console lines plus debug detail and stage timings."""
    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    _CONSOLE["quiet"] = quiet
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # no progress bars either
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


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

    run_stage(Experiment(config), stage, echo=say, **options)


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
    run_all(resolved, force=force, echo=say, run_index=run_index)


@app.command()
def presets() -> None:
    """List the presets (paper settings per dataset) that `run` and `preset:` accept."""
    from synthshot.config import PRESETS_DIR, list_presets, read_yaml

    import re

    names = list_presets()
    for name in names:
        text = (PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        read_yaml(PRESETS_DIR / f"{name}.yaml")
        comment = []
        for line in text.splitlines():  # the leading comment, whose first sentence is the summary
            if not line.startswith("#") or not line.lstrip("# ").strip():
                break
            comment.append(line.lstrip("# ").strip())
        summary = re.split(r"(?<=\.)\s+(?=[A-Z(`])", " ".join(comment), maxsplit=1)[0]
        typer.echo(f"{name:<24} {summary}")
    example = "dipsy-dtd" if "dipsy-dtd" in names else names[0]
    typer.echo(f"\nprint one: synthshot config {example}    run one: synthshot run {example} (or preset: {example} "
               "in a config of your own)")


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


@app.command()
def predict(
    source: Annotated[Path, typer.Argument(help="A run folder, or a folder written by `synthshot export`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, folders, or .txt files listing paths.")],
    method: Annotated[Optional[str], typer.Option(
        help="finetune | prototypes | text | combined | tip_adapter (default: the best on validation).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes per image.")] = 5,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="preds.csv or preds.jsonl.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward.")] = 32,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:1 ...")] = "auto",
) -> None:
    """Classify new images with a trained run or an export, with the preprocessing its evaluation
    used. Unreadable images are reported and skipped; the exit code is then 3."""
    from synthshot.classifier import collect_images, load_classifier, predict_files, write_predictions

    files = collect_images(images)
    clf = load_classifier(source, method, device=device)
    skipped = []

    def skip(path, reason):
        skipped.append(path)
        typer.echo(f"skipped {str(path)!r}: {reason}", err=True)

    rows = predict_files(clf, files, top_k=top_k, batch_size=batch_size, on_skip=skip)
    text = write_predictions(rows, output, top_k)
    if text:
        typer.echo(text)
    where = f" -> {output}" if output else ""
    typer.echo(f"{clf.method}: {len(rows)} image(s) classified, {len(skipped)} skipped{where}", err=True)
    if skipped:
        raise typer.Exit(3)


@app.command()
def export(
    source: Annotated[Path, typer.Argument(help="A run folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The export folder to write.")],
    method: Annotated[Optional[str], typer.Option(help="The classifier to export (default: the best on validation).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an earlier export in that folder.")] = False,
) -> None:
    """Write a standalone classifier: CLIP (LoRA merged) loadable with CLIPModel.from_pretrained, the
    classifier head in safetensors, the classes, the processor and a model card."""
    from synthshot.classifier import export_classifier

    folder = export_classifier(source, output, method, force=force)
    typer.echo(f"export: {folder}")


@app.command("config")
def show_config(
    config: Annotated[Optional[Path], typer.Argument(
        metavar="CONFIG|KEY",
        help="YAML config; defaults apply where it is silent. With --explain: the key or section to describe.")] = None,
    set_: SetOpt = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Describe the config keys instead (type, default, meaning): every key, or only KEY, e.g. "
        "generation.steps or a section such as finetune. The same reference is docs/config.md.")] = False,
) -> None:
    """Print the resolved config (defaults, file and overrides) as YAML; with --explain [KEY], what
    each key means."""
    if explain:
        from synthshot.config_reference import explain as explain_keys
        from synthshot.io import one_line

        if set_:
            raise typer.BadParameter("--explain describes the keys; it takes no --set")
        try:
            text = explain_keys(str(config) if config is not None else None)
        except SynthshotError as exc:  # an unknown key: one line naming the closest, as `main` prints errors
            typer.echo(f"error: {one_line(str(exc))}", err=True)
            raise typer.Exit(2) from None
        typer.echo(text, nl=False)
        return
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
        handler.setLevel(logging.INFO)  # run.log takes the debug detail; -v shows it here too
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
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130 before it gets here
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except SynthshotError as exc:
        from synthshot.io import one_line

        typer.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
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


def _interrupted() -> None:
    """Ctrl-C: say what the interrupted stage had saved ("12 of 40 images saved") and how to go on."""
    from synthshot.stages.base import Interrupted

    saved = Interrupted.last or "finished work is kept"
    typer.echo(f"interrupted: {saved}; rerun the same command to resume", err=True)
    sys.exit(130)


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
