"""Where stages meet: one resolved experiment feeds every stage, stage records cannot lie, images
record what made them, fine-tuning follows the config, sweeps survive a failed run, test sets are
honest and runs can be moved. Each test names the failure of the old stage layer it guards."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthshot.config import load_config
from synthshot.errors import ConfigError, DataError, SynthshotError
from synthshot.experiment import Experiment
from synthshot.results import read_results
from synthshot.runs import SweepFailed, read_state, run, run_stage, run_stages

SRC = Path(__file__).resolve().parents[1] / "src" / "synthshot"
LIBRARIES = ("generation", "features", "classify", "data", "datasets", "prompts", "report", "models")
STAGE_LAYER = ("synthshot.stages", "synthshot.experiment", "synthshot.runs", "synthshot.cli")


def quiet(*_):
    pass


def small(tmp_path, kit, *overrides, name="out"):
    return load_config(None, [
        f"output_dir={tmp_path / name}", f"models.tiny_kit={kit}", "offline=true",
        "data.demo.classes=2", "data.demo.images_per_class=6", "data.demo.size=32", "data.shots=2",
        "generation.images_per_class=2", "generation.steps=1", "generation.height=32", "generation.width=32",
        "generation.precision=fp32", "generation.batch_size=8", "features.batch_size=16",
        "finetune.epochs=1", "finetune.batch_size=4", "finetune.steps_per_epoch=1", "finetune.warmup_steps=0",
        "finetune.num_workers=0", "finetune.precision=fp32", *overrides,
    ])


def test_libraries_never_import_the_stage_layer():
    offenders = []
    for folder in LIBRARIES:
        for path in sorted((SRC / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if n.startswith(STAGE_LAYER)]
    assert not offenders


def test_a_shots_and_images_per_class_sweep_with_finetune(tmp_path, tiny_kit):
    """Failures 1, 2 and 8: fine-tuning reads the sweep's shared set, uses exactly the first
    images_per_class of each class, and every run is tested on the same images."""
    config = small(tmp_path, tiny_kit, "stages=[data, similarity, generate, finetune]",
                   "sweep={data.shots: [1, 2], generation.images_per_class: [1, 2]}")
    runs = run(config, echo=quiet)
    assert len(runs) == 4
    test_sets = set()
    for one in runs:
        results = read_results(one.output_dir / "finetune" / "results.json")
        params = results["results"][0]["params"]
        assert params["num_synthetic"] == 2 * one.generation.images_per_class  # 2 classes
        assert params["num_real"] == 2 * one.data.shots
        test_set = results["run"]["test_set"]  # each run draws its own copy of the demo data
        test_sets.add((test_set["digest"], test_set["num_images"]))
    assert test_sets == {(test_sets.copy().pop()[0], 8)}  # held out of the 2-shot split for every run
    shared = {one.synthetic_dir for one in runs}
    assert len(shared) == 2 and all(p.parent == config.output_dir / "shared" for p in shared)


def test_a_killed_generate_is_never_skipped(tmp_path, tiny_kit):
    """Failure 3: SIGKILL of `synthshot run` during generate, after an earlier finished run of the
    same settings whose images were deleted; the rerun ends with every image."""
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({
        "output_dir": str(tmp_path / "out"), "offline": True, "stages": ["data", "generate"],
        "models": {"tiny_kit": str(tiny_kit)}, "data": {"demo": {"classes": 2, "images_per_class": 3, "size": 32},
                                                       "shots": 2},
        "generation": {"mode": "single", "images_per_class": 8, "steps": 2, "height": 32, "width": 32,
                       "precision": "fp32", "batch_size": 1},
    }))
    command = [sys.executable, "-m", "synthshot.cli", "run", str(path)]
    assert subprocess.run(command, capture_output=True, text=True, timeout=300).returncode == 0
    exp = Experiment(load_config(path))
    shutil.rmtree(exp.layout.synthetic)  # the user cleans the images; the stage record stays

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = exp.layout.synthetic / "manifest.jsonl"
    deadline = time.time() + 240
    while (not manifest.exists() or len(manifest.read_text().splitlines()) < 3) and time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(manifest.read_text().splitlines()) < 16
    assert "generate" not in read_state(exp.layout.out)  # cleared when the stage started

    lines = []
    assert run_stages(exp.config, echo=lines.append) == ["generate"]
    assert len(manifest.read_text().splitlines()) == 16 and "generate" in read_state(exp.layout.out)


def test_images_made_with_other_settings_are_never_reused(tmp_path, tiny_kit):
    """Failure 4: other steps (or seed, or mode) make another set; a pinned folder refuses."""
    first = small(tmp_path, tiny_kit, "generation.mode=single")
    a = run_stage(Experiment(first), "generate", echo=quiet, progress=False)
    second = small(tmp_path, tiny_kit, "generation.mode=single", "generation.steps=2")
    b = run_stage(Experiment(second), "generate", echo=quiet, progress=False)
    assert len(a.done) == len(b.done) == 4 and b.skipped == []
    folders = {Experiment(c).layout.synthetic for c in (first, second)}
    assert len(folders) == 2
    for config in (first, second):
        records = [json.loads(x) for x in (Experiment(config).layout.synthetic / "manifest.jsonl").read_text().splitlines()]
        assert {r["steps"] for r in records} == {r["settings"]["steps"] for r in records} == {config.generation.steps}

    pinned = tmp_path / "pinned"
    run_stage(Experiment(small(tmp_path, tiny_kit, "generation.mode=single", f"synthetic_dir={pinned}")),
              "generate", echo=quiet, progress=False)
    other_seed = small(tmp_path, tiny_kit, "generation.mode=single", f"synthetic_dir={pinned}", "seed=5")
    with pytest.raises(DataError, match=r"made with other settings.*seed: 0 -> 5"):
        run_stage(Experiment(other_seed), "generate", echo=quiet, progress=False)


def test_changed_finetune_settings_retrain_and_force_restarts(tmp_path, tiny_kit):
    """Failure 5: a changed setting retrains (the old run moved aside), --resume refuses it,
    `run --force` restarts, and the verb on a finished run just continues it."""
    config = small(tmp_path, tiny_kit, "generation.mode=single", "stages=[data, generate, finetune]")
    run_stages(config, echo=quiet)
    out = config.output_dir
    changed = small(tmp_path, tiny_kit, "generation.mode=single", "stages=[data, generate, finetune]", "finetune.lr=0.001")
    with pytest.raises(ConfigError, match=r"lr=0.0001 then, 0.001 now.*without --resume"):
        run_stage(Experiment(changed), "finetune", mode="resume", echo=quiet, progress=False)
    lines = []
    assert run_stages(changed, echo=lines.append) == ["finetune"]
    moved = next(line for line in lines if "moved aside to" in line).rsplit("moved aside to ", 1)[1].split(";")[0]
    assert (Path(moved) / "results.json").is_file()
    assert read_results(out / "finetune" / "results.json")["results"][0]["params"]["lr"] == 0.001

    lines = []
    assert run_stages(changed, force=True, echo=lines.append)[-1] == "finetune"
    assert any("moved aside to" in line for line in lines)
    assert len(list((out / ".synthshot" / "previous").iterdir())) == 2
    lines = []
    run_stage(Experiment(changed), "finetune", echo=lines.append, progress=False)  # a finished run: continued
    assert any("epoch 1 of 1 done" in line for line in lines)


def test_a_sweep_goes_on_after_a_failed_run_and_ends_nonzero(tmp_path, tiny_kit):
    """Failure 6: a run that fails is recorded; the others run; the table and report say so."""
    from synthshot.models.tiny import kit_model_settings

    models = kit_model_settings(tiny_kit)
    config = load_config(None, [
        f"output_dir={tmp_path / 'sweep'}", "offline=true", "data.demo.classes=2", "data.demo.images_per_class=3",
        "data.demo.size=32", "data.shots=0", "classifier.methods=[text]", "stages=[data, features, evaluate, report]",
        f"models.diffusion={models['diffusion']}",
        f"sweep={{models.clip: [{tmp_path / 'no-such-model'}, {models['clip']}]}}",
    ])
    lines = []
    with pytest.raises(SweepFailed, match=r"1 of 2 sweep runs failed \(first: clip=no-such-model"):
        run(config, echo=lines.append)
    status = json.loads((config.output_dir / ".synthshot" / "sweep.json").read_text())["runs"]
    assert status["clip=no-such-model"]["status"] == "failed" and status["clip=clip"]["status"] == "done"
    assert read_results(config.output_dir / "clip=clip" / "evaluate" / "results.json")["results"]
    table = next(line for line in lines if "test top-1" in line)
    assert "FAILED" in table and "no-such-model" in table
    page = (config.output_dir / "report" / "index.html").read_text()
    assert "Failed runs" in page and "clip=no-such-model" in page


def test_a_method_the_encoder_cannot_run_is_skipped_with_its_reason(tmp_path, tiny_kit, monkeypatch):
    """Failure 6: an encoder without a text tower runs the image methods and records the rest."""
    import synthshot.stages.features as features_stage

    real = features_stage.load_encoder

    def without_text(exp, *args):
        encoder = real(exp, *args)
        encoder.__class__ = type("NoText", (encoder.__class__,), {"has_text_tower": property(lambda self: False)})
        return encoder

    monkeypatch.setattr(features_stage, "load_encoder", without_text)
    config = small(tmp_path, tiny_kit, "data.shots=0", "generation.mode=text",
                   "classifier.methods=[prototypes, text, combined]", "stages=[data, generate, features, evaluate]")
    run_stages(config, echo=quiet)
    results = read_results(config.output_dir / "evaluate" / "results.json")
    assert {e["method"] for e in results["results"]} == {"prototypes"}
    assert [s["method"] for s in results["skipped"]] == ["text", "combined"]
    assert "no text tower" in results["skipped"][0]["reason"]


def test_evaluate_refuses_validation_images_that_are_test_images(tmp_path, tiny_kit):
    """Failure 7."""
    config = small(tmp_path, tiny_kit, "classifier.val.source=heldout", "stages=[data, evaluate]")
    with pytest.raises(ConfigError, match=r"classifier.val and classifier.test share 8 image"):
        run_stage(Experiment(config), "evaluate", echo=quiet)


def test_heldout_test_set_is_the_same_for_every_shot_count_of_a_sweep(tmp_path, tiny_kit):
    """Failure 8, at the experiment level: a shots sweep holds out its largest split."""
    config = small(tmp_path, tiny_kit, "sweep={data.shots: [1, 2, 4]}", "stages=[data]")
    tests = [sorted(str(p.relative_to(one.output_dir)) for p in Experiment(one).classifier_sets.test.files)
             for one in run(config, echo=quiet)]  # each run draws its own copy of the demo data
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 4  # 6 - 4 per class, 2 classes
    alone = Experiment(small(tmp_path, tiny_kit, "data.shots=1", name="alone")).classifier_sets.test
    assert len(alone) == 10  # a single run holds out only its own split


def test_a_copied_run_keeps_its_training_images_out_of_the_test_set(tmp_path, tiny_kit):
    """Failure 9: split files are relative to the data root, so `cp -a` of a run changes nothing."""
    original = small(tmp_path, tiny_kit, name="original")
    run_stage(Experiment(original), "data", echo=quiet)
    shutil.copytree(tmp_path / "original", tmp_path / "copy", symlinks=True)
    copy = small(tmp_path, tiny_kit, name="copy")
    exp = Experiment(copy)
    assert all(p.is_relative_to(tmp_path / "copy") for files in exp.data.split.values() for p in files)
    assert len(exp.classifier_sets.test) == len(Experiment(original).classifier_sets.test) == 8


def test_a_moved_data_root_is_a_one_line_error_naming_the_split_and_the_root(tmp_path, tiny_kit):
    from PIL import Image

    root = tmp_path / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90, 0)).save(root / name / f"{i}.png")
    config = load_config(None, [f"output_dir={tmp_path / 'out'}", f"data.root={root}", "data.shots=2"])
    run_stage(Experiment(config), "data", echo=quiet)
    root.rename(tmp_path / "moved")
    with pytest.raises(DataError) as info:
        Experiment(config).data
    message = str(info.value)
    assert "\n" not in message and str(Experiment(config).split_file) in message and str(root) in message


def test_the_verbs_record_their_stage_so_run_skips_it(tmp_path, tiny_kit):
    config = small(tmp_path, tiny_kit, "stages=[data, similarity]")
    run_stage(Experiment(config), "data", echo=quiet)
    assert run_stages(config, echo=quiet) == ["similarity"]
    assert run_stages(config, echo=quiet) == []


def test_no_synthetic_images_with_lambda_below_one_is_a_one_line_error(tmp_path, tiny_kit):
    config = small(tmp_path, tiny_kit, "stages=[data, finetune]")
    with pytest.raises(SynthshotError, match=r"lam=0.8 gives the synthetic images weight 0.2, but there are none"):
        run_stages(config, echo=quiet)


def test_seeds_give_mean_and_std_in_results_table_and_report(tmp_path, tiny_kit):
    """`seeds: [1, 2]`: one run per seed (the seed and the split seed), summarised in the run's own
    results.json as mean ± sample std, in the sweep table and in the report."""
    import statistics

    from synthshot.runs import sweep_table

    config = small(tmp_path, tiny_kit, "seeds=[1, 2]", "data.demo.images_per_class=8",
                   "generation.mode=text", "stages=[data, generate, features, prototypes, evaluate, report]",
                   "classifier.methods=[prototypes, text]")
    run(config, echo=quiet)
    out = config.output_dir
    per_seed = {seed: read_results(out / f"seed={seed}" / "evaluate" / "results.json") for seed in (1, 2)}
    assert per_seed[1]["config"]["data"]["split_seed"] == 1 and per_seed[2]["config"]["seed"] == 2
    summary = read_results(out / "evaluate" / "results.json")
    assert summary["run"]["seeds"] == [1, 2]
    for entry in summary["results"]:
        tops = [next(e for e in per_seed[s]["results"] if (e["method"], e["split"]) == (entry["method"], entry["split"]))
                ["metrics"]["top1"] for s in (1, 2)]
        assert entry["metrics"]["top1"] == pytest.approx(statistics.mean(tops))
        assert entry["metrics"]["top1_std"] == pytest.approx(statistics.stdev(tops))
        assert entry["metrics"]["per_seed"] == {"1": tops[0], "2": tops[1]}
    table = sweep_table(out)
    assert table.count("±") == 2 and "seed=1" not in table  # the summary, not the seeds one by one
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert " ± " in page


def test_aggregate_seeds_keeps_entries_every_seed_has():
    from synthshot.results import aggregate_seeds, make_results

    def metrics(top1, confusion):
        return {"top1": top1, "balanced_top1": top1 / 2, "num_images": 4, "classes": ["a", "b"],
                "per_class": {"a": top1, "b": None}, "confusion": confusion, "support": {"a": 2, "b": 2}}

    one = make_results("evaluate", [
        {"method": "text", "split": "test", "params": {"k": 1}, "metrics": metrics(0.5, [[1, 1], [0, 2]])},
        {"method": "prototypes", "split": "test", "metrics": metrics(0.25, [[1, 1], [2, 0]])},
    ])
    two = make_results("evaluate", [
        {"method": "text", "split": "test", "params": {"k": 2}, "metrics": metrics(1.0, [[2, 0], [0, 2]])},
    ])
    summary = aggregate_seeds({7: one, 3: two})
    (entry,) = summary["results"]
    assert entry["method"] == "text" and entry["params"] == {"seeds": [3, 7]}
    assert entry["metrics"]["top1"] == 0.75 and entry["metrics"]["top1_std"] == pytest.approx(0.5 / 2 ** 0.5)
    assert entry["metrics"]["per_class"] == {"a": 0.75, "b": None}
    assert entry["metrics"]["confusion"] == [[3, 1], [0, 4]] and entry["metrics"]["support"] == {"a": 4, "b": 4}
