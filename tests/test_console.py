"""What a user reads in the terminal: one line per event, percentages, no library warnings, a line
while models load, a message on Ctrl-C, the presets and the help; and the words themselves
("an airplane", the dataset's own name)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "synthshot.cli"]
REPO = Path(__file__).resolve().parents[1]


def synthshot(*args, **kwargs):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def shown_lines(output: str) -> list[str]:
    """The lines a terminal ends up showing: per line, what follows its last carriage return
    (progress bars redraw themselves with one)."""
    lines = []
    for line in output.split("\n"):
        shown = line.split("\r")[-1].strip()
        if shown:
            lines.append(shown)
    return lines


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tiny_kit) -> str:
    """stdout and stderr of the quickstart, as one stream, run in a temporary folder."""
    out = tmp_path_factory.mktemp("quickstart") / "out"
    done = subprocess.run(
        [*CLI, "run", REPO / "examples" / "quickstart.yaml", "-o", out, "--set", f"models.tiny_kit={tiny_kit}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout


def test_quickstart_prints_each_line_once(quickstart):
    lines = [line for line in shown_lines(quickstart) if re.search(r"\w", line)]  # table rules may repeat
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert repeated == [], "\n".join(repeated)
    assert not [line for line in lines if line.startswith("INFO ")], quickstart  # no logging line beside its echo


def test_quickstart_shows_no_library_warning(quickstart):
    assert "Warning" not in quickstart and "warnings.warn" not in quickstart, quickstart


def test_quickstart_gives_accuracies_in_percent(quickstart):
    assert not re.search(r"top-1 0\.\d{4}", quickstart), quickstart
    assert re.search(r"test top-1 +\d+\.\d\d%", quickstart), quickstart


def test_quickstart_says_while_models_load_and_shows_the_evaluation(quickstart):
    assert re.search(r"^loading .*IP-Adapters .*\.\.\.$", quickstart, re.MULTILINE), quickstart
    # The fine-tuned adapter's test evaluation has a progress bar of its own.
    assert re.search(r"evaluat\w* test[^\n]*\d+/\d+", quickstart), quickstart


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path, tiny_kit):
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"""
output_dir: {out}
offline: true
models: {{tiny_kit: {tiny_kit}}}
data: {{demo: {{classes: 2, images_per_class: 2, size: 32}}, shots: 2}}
generation: {{images_per_class: 60, steps: 4, height: 32, width: 32, batch_size: 1, precision: fp32}}
"""
    )
    # A test run started in the background (`pytest &` without job control) ignores SIGINT, and a
    # child would inherit that: give it the default, as a terminal's Ctrl-C finds it.
    process = subprocess.Popen([*CLI, "generate", config], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def saved() -> int:
        manifests = list(out.glob("synthetic-*/manifest.jsonl"))
        return len(manifests[0].read_text().splitlines()) if manifests else 0

    deadline = time.time() + 240
    # The last line may be an item still being written (its record comes before its image's final
    # name), which the interrupt rolls back: wait for three, expect at least two kept.
    while saved() < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "generation ended before it could be interrupted: make it longer"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    found = re.search(r"^interrupted: (\d+) of 120 images saved; rerun the same command to resume$", stderr,
                      re.MULTILINE)
    assert found, stderr
    assert int(found.group(1)) == saved() >= 2
    assert "Traceback" not in stderr


def test_presets_show_whole_summaries_and_how_to_print_one():
    result = synthshot("presets")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    dipsy = next(line for line in lines if line.startswith("dipsy "))
    assert dipsy.rstrip().endswith("CLIP ViT-B/16 + LoRA on real + synthetic images."), dipsy
    lgclip = next(line for line in lines if line.startswith("lgclip "))
    assert lgclip.rstrip().endswith("."), lgclip
    assert any("synthshot config dipsy-dtd" in line for line in lines), result.stdout
    shown = synthshot("config", "dipsy-dtd")
    assert shown.returncode == 0 and "dataset: dtd" in shown.stdout, shown.stderr


PIPELINE = ["run", "presets", "config", "data", "prompts", "similarity", "generate", "features", "prototypes",
            "finetune", "evaluate", "report"]


def test_help_lists_the_verbs_in_pipeline_order_with_an_example_each():
    result = synthshot("--help", env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    commands = result.stdout[result.stdout.index("Commands"):]
    listed = [m.group(1) for m in re.finditer(r"^│ (\w[\w-]*) ", commands, re.MULTILINE)]
    assert [verb for verb in listed if verb in PIPELINE] == PIPELINE, listed
    examples = result.stdout[result.stdout.index("Examples"):]
    shown = [m.group(1) for m in re.finditer(r"^ *synthshot (\w[\w-]*)", examples, re.MULTILINE)]
    assert [verb for verb in shown if verb in PIPELINE] == PIPELINE, examples
    assert set(listed) <= set(shown), (listed, shown)  # every verb has an example


# ------------------------------------------------------------------------------ the words
def test_template_prompts_say_an_before_a_vowel_sound():
    from synthshot.experiment import FewShotData
    from synthshot.prompts.templates import fill_template, template_prompts

    assert template_prompts("airplane", 2, ("A photo of a {}", "a photo of a {}, a type of aircraft.")) == [
        "A photo of an airplane", "a photo of an airplane, a type of aircraft."]
    assert fill_template("a photo of a {}.", "dog") == "a photo of a dog."
    assert fill_template("a photo of a {}.", "owl") == "a photo of an owl."
    assert fill_template("a photo of a {}.", "unicorn") == "a photo of a unicorn."
    assert fill_template("a photo of a {}.", "hourglass") == "a photo of an hourglass."
    assert fill_template("a photo of the {}.", "apple") == "a photo of the apple."
    assert fill_template("a bad photo of a {}.", "egg") == "a bad photo of an egg."
    data = FewShotData(split_file=None, split={"airplane": []}, class_names={"airplane": "airplane"})
    assert data.prompts("A photo of a {}") == {"airplane": "A photo of an airplane"}


def test_the_dataset_is_named_after_its_folder_not_its_split(tmp_path):
    from synthshot.config import load_config
    from synthshot.experiment import Experiment

    root = tmp_path / "my-cats" / "train"
    root.mkdir(parents=True)

    def name(*overrides):
        return Experiment(load_config(None, [f"output_dir={tmp_path / 'out'}", *overrides])).dataset_name

    assert name(f"data.root={root}") == "my-cats"
    assert name(f"data.root={tmp_path / 'my-cats'}") == "my-cats"
    assert name(f"data.root={root}", "data.dataset=dtd") == "dtd"
