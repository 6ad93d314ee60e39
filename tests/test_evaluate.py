"""The training-free stages end to end on the tiny kit: features, prototypes, evaluate, and the
whole quickstart (every stage, then a rerun that redoes nothing)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from synthshot.config import load_config
from synthshot.errors import DataError
from synthshot.results import read_results
from synthshot.experiment import Experiment
from synthshot.runs import run_stage, run_stages

ROOT = Path(__file__).resolve().parents[1]


def quiet(*_):
    pass


def base_overrides(tmp_path, kit):
    return [
        f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={kit}", "data.demo.classes=3",
        "data.demo.images_per_class=4", "data.demo.size=32", "generation.images_per_class=2",
        "generation.steps=2", "generation.height=32", "generation.width=32", "generation.precision=fp32",
        "features.batch_size=8",
    ]


def test_zero_shot_lgclip_flow_with_validation_choices(tmp_path, tiny_kit):
    """LGCLIP: class names only, template prompts, text-to-image prototypes, multi-scale features;
    alpha/beta and the mixture weight are chosen on a validation folder, never on test."""
    val = tmp_path / "val"
    for i, name in enumerate(["circle", "square", "triangle"]):
        (val / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), (80 * i, 40, 200 - 60 * i)).save(val / name / "v.png")
    config = load_config(None, [
        *base_overrides(tmp_path, tiny_kit), "data.shots=0", "generation.mode=text", "prompts.per_class=3",
        "features.multiscale=true", "features.scales=[5, 10]", "classifier.val.source=folder",
        f"classifier.val.root={val}", "classifier.tip_alpha=[0.5, 2.0]", "classifier.tip_beta=[1.0]",
        "stages=[data, prompts, generate, features, prototypes, evaluate]",
    ])
    run_stages(config, echo=quiet)
    out = config.output_dir
    prompts = json.loads((out / "prompts" / "prompts.json").read_text())
    records = [json.loads(line) for line in (Experiment(config).layout.synthetic / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["prompt"] in prompts[r["class_name"]] for r in records)
    assert {r["prompt"] for r in records if r["class_name"] == "circle"} == set(prompts["circle"][:2])  # cycled

    results = read_results(out / "evaluate" / "results.json")
    by = {(e["method"], e["split"]): e for e in results["results"]}
    assert set(by) == {(m, s) for m in ("prototypes", "text", "combined", "tip_adapter") for s in ("val", "test")}
    test = by["tip_adapter", "test"]
    assert test["selected_on"] == "val" and test["params"]["alpha"] in (0.5, 2.0)
    assert test["metrics"]["num_images"] == 12  # zero-shot: every demo image is a test image
    assert by["prototypes", "test"]["selected_on"] is None
    assert results["run"]["shots"] == 0 and results["config"]["features"]["multiscale"] is True
    info = json.loads((out / "prototypes" / "prototypes.json").read_text())
    assert info["images_per_class"] == {"circle": 2, "square": 2, "triangle": 2}
    from synthshot.classify.evaluate import load_prototypes

    prototypes, classes = load_prototypes(out / "prototypes")
    assert classes == ["circle", "square", "triangle"] and prototypes.shape[0] == 3


def test_missing_synthetic_class_is_named(tmp_path, tiny_kit):
    config = load_config(None, [*base_overrides(tmp_path, tiny_kit), "data.shots=0", "generation.mode=text",
                                "stages=[data, generate]"])
    run_stages(config, echo=quiet)
    out = Experiment(config).layout.synthetic
    lines = [line for line in (out / "manifest.jsonl").read_text().splitlines() if '"square"' not in line]
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    shutil.rmtree(out / "synthetic" / "square")

    with pytest.raises(DataError, match="'square'"):
        run_stage(Experiment(config), "prototypes", echo=quiet)


def test_quickstart_runs_every_stage_and_a_rerun_redoes_nothing(tmp_path, tiny_kit, monkeypatch):
    from synthshot.stages import STAGES

    config = load_config(ROOT / "examples" / "quickstart.yaml", [
        f"output_dir={tmp_path / 'quick'}", f"models.tiny_kit={tiny_kit}", "finetune.epochs=1",
    ])

    def interrupted(*_, **__):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # a Ctrl-C during evaluate
        patch.setitem(STAGES, "evaluate", dataclasses.replace(STAGES["evaluate"], run=interrupted))
        with pytest.raises(KeyboardInterrupt):
            run_stages(config, echo=quiet)
    assert run_stages(config, echo=quiet) == ["evaluate", "report"]  # what had finished is not redone
    out = config.output_dir
    assert read_results(out / "evaluate" / "results.json")["results"]
    assert read_results(out / "finetune" / "results.json")["results"][0]["method"] == "finetune"
    assert (out / "report" / "index.html").is_file()
    assert run_stages(config, echo=quiet) == []


def test_sweep_shares_and_extends_the_synthetic_set_and_reports_once(tmp_path, tiny_kit):
    from synthshot.runs import run

    lines = []
    config = load_config(None, [
        *base_overrides(tmp_path, tiny_kit), "data.shots=0", "generation.mode=text",
        "classifier.methods=[prototypes]", "stages=[data, generate, features, prototypes, evaluate, report]",
        "sweep={generation.images_per_class: [1, 2]}",
    ])
    runs = run(config, echo=lines.append)
    shared = runs[0].synthetic_dir
    assert shared == runs[1].synthetic_dir
    records = [json.loads(line) for line in (shared / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 0, 0, 1, 1, 1]  # the 2-image run extended the 1-image set
    for one, per_class in zip(runs, (1, 2)):
        info = json.loads((one.output_dir / "prototypes" / "prototypes.json").read_text())
        assert set(info["images_per_class"].values()) == {per_class}
        assert read_results(one.output_dir / "evaluate" / "results.json")["run"]["images_per_class"] == per_class
    table = next(line for line in lines if "test top-1" in line)
    assert "images_per_class=1" in table and "images_per_class=2" in table
    assert (config.output_dir / "report" / "index.html").is_file()


def test_lgclip_example_stage_by_stage_through_the_cli(tmp_path, tiny_kit):
    from typer.testing import CliRunner

    from synthshot.cli import app

    example = str(ROOT / "examples" / "lgclip_quickstart.yaml")
    common = ["--set", f"models.tiny_kit={tiny_kit}", "--output", str(tmp_path / "lg")]
    runner = CliRunner()
    for verb in (["prompts"], ["generate", "--mode", "text"], ["features", "--set", "features.multiscale=false"],
                 ["features"], ["evaluate"]):
        result = runner.invoke(app, [verb[0], example, *common, *verb[1:]])
        assert result.exit_code == 0, result.output
    out = tmp_path / "lg"
    caches = sorted(p.name for p in (out / "features").glob("test_*.safetensors"))
    assert len(caches) == 2 and any("_ms1-2-3" in name for name in caches)  # single and multi-scale, apart
    results = read_results(out / "evaluate" / "results.json")
    assert results["run"]["shots"] == 0 and results["config"]["features"]["multiscale"] is True
    assert {e["method"] for e in results["results"]} == {"prototypes", "text", "combined", "tip_adapter"}
    assert results["results"][0]["metrics"]["num_images"] == 24


def _direct_val_search(val_features, val_labels, prototypes, text_weights, keys, key_labels, alphas, betas):
    """The choices made on validation, written out: the first grid value with the best top-1."""
    import torch

    labels = torch.tensor(val_labels)

    def top1(logits):
        return float((logits.argmax(-1) == labels).float().mean())

    text = 100 * val_features @ text_weights.T
    weights = [round(0.1 * i, 1) for i in range(11)]
    scores = [top1(w * 100 * (val_features @ prototypes.T) + (1 - w) * text) for w in weights]
    weight = weights[scores.index(max(scores))]
    best = None
    for beta in betas:
        affinity = torch.exp(-beta * (1 - val_features @ keys.T))
        cache = affinity @ torch.nn.functional.one_hot(key_labels, prototypes.shape[0]).float()
        for alpha in alphas:
            score = top1(text + alpha * cache)
            if best is None or score > best[0]:
                best = (score, alpha, beta)
    return weight, best[1], best[2]


def test_hyper_parameters_are_chosen_on_validation_only_never_on_test():
    """Validation and test disagree on the best parameters (the prototypes and the cache are right
    on validation, the text classifier on test): the choices must be exactly those of a search on
    validation, and must not move when the test split changes."""
    import torch

    from synthshot.classify.evaluate import Split, score_methods
    from synthshot.config import ClassifierConfig

    eye = torch.eye(3)
    prototypes, keys, key_labels = eye.clone(), eye.clone(), torch.tensor([0, 1, 2])
    text_weights = eye[[1, 2, 0]]  # the text classifier calls class c "c - 1"
    features = torch.nn.functional.normalize(eye + 0.05 * torch.ones(3, 3), dim=-1)
    val_labels = [0, 1, 2]  # prototypes and cache right, text wrong
    test_labels = [1, 2, 0]  # text right, prototypes and cache wrong
    settings = ClassifierConfig(tip_alpha=[0.0, 0.5, 1000.0], tip_beta=[1.0, 5.0])

    def chosen(test_features, labels):
        splits = [Split("val", features, val_labels), Split("test", test_features, labels)]
        entries = score_methods(["combined", "tip_adapter"], settings, splits, ["a", "b", "c"], prototypes=prototypes,
                                keys=keys, key_labels=key_labels, text_weights=text_weights)
        by = {(e["method"], e["split"]): e for e in entries}
        assert all(e["selected_on"] == "val" for e in entries)
        return by["combined", "test"]["params"]["weight"], by["tip_adapter", "test"]["params"]["alpha"], \
            by["tip_adapter", "test"]["params"]["beta"], by

    on_val = _direct_val_search(features, val_labels, prototypes, text_weights, keys, key_labels,
                                settings.tip_alpha, settings.tip_beta)
    on_test = _direct_val_search(features, test_labels, prototypes, text_weights, keys, key_labels,
                                 settings.tip_alpha, settings.tip_beta)
    assert on_val[:2] != on_test[:2]  # choosing on test would give other parameters
    weight, alpha, beta, by = chosen(features, test_labels)
    assert (weight, alpha, beta) == on_val
    assert by["combined", "val"]["metrics"]["top1"] == 1.0 and by["tip_adapter", "val"]["metrics"]["top1"] == 1.0
    assert by["combined", "test"]["metrics"]["top1"] == 0.0  # the price of choosing on validation here

    # Poisoned test splits (other labels, other features) leave every choice where it was.
    for poisoned_features, poisoned_labels in ((features, [2, 0, 1]), (features.flip(0), [0, 1, 2]),
                                               (torch.nn.functional.normalize(torch.rand(6, 3), dim=-1), [1] * 6)):
        assert chosen(poisoned_features, poisoned_labels)[:3] == on_val
