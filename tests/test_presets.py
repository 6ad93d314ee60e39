"""Every preset runs end to end: `synthshot run <preset>` through the preset file itself, on a
small drawn copy of its dataset laid out exactly as `synthshot datasets prepare` lays it out (the
real class names, the CoOp split files), with the models swapped for the tiny kit, the LLM for the
registry templates, and counts and sizes reduced with `--set`. All of the preset's stages and its
sweep run; a broken preset fails its test."""

from __future__ import annotations

import json

import pytest
from prepared_datasets import make_prepared_dataset, preset_data
from typer.testing import CliRunner

from synthshot.cli import app
from synthshot.config import list_presets, load_config
from synthshot.results import read_results

DATASET_PRESETS = sorted(name for name in list_presets() if name in preset_data())

# Small and fast, and nothing the preset's own structure depends on.
COMMON = ["offline=true", "generation.steps=2", "generation.height=32", "generation.width=32",
          "generation.precision=fp32", "generation.batch_size=8", "generation.images_per_class=2"]
DIPSY = ["data.shots=2", "similarity.batch_size=8", "finetune.epochs=1", "finetune.batch_size=4",
         "finetune.steps_per_epoch=1", "finetune.warmup_steps=0", "finetune.num_workers=0", "finetune.precision=fp32",
         "finetune.eval_batch_size=16"]
LGCLIP = ["prompts.backend=template", "prompts.per_class=2", "features.scales=[5, 10]", "features.batch_size=16",
          "classifier.tip_alpha=[1.0]", "classifier.tip_beta=[1.0, 5.5]"]


def test_every_dataset_preset_is_covered():
    assert len(DATASET_PRESETS) == 16
    assert {name.split("-")[0] for name in DATASET_PRESETS} == {"dipsy", "lgclip"}


@pytest.mark.parametrize("preset", DATASET_PRESETS)
def test_preset_runs_end_to_end(preset, tmp_path, tiny_kit, monkeypatch):
    data = preset_data()[preset]
    make_prepared_dataset(data["dataset"], tmp_path, classes=3, train=3, val=2, test=2)
    monkeypatch.chdir(tmp_path)  # the preset's relative data.root and output_dir are read from here
    overrides = [f"models.tiny_kit={tiny_kit}", *COMMON, *(DIPSY if preset.startswith("dipsy") else LGCLIP)]
    args = ["run", preset]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    config = load_config(preset, overrides)
    out = tmp_path / config.output_dir
    assert (out / "report" / "index.html").is_file()
    results = sorted(p for p in out.rglob("results.json") if ".synthshot" not in p.parts)
    runs = (len(config.sweep["models.clip"]) if config.sweep else 1) * (1 + len(config.controls))
    assert len(results) == runs  # every run of the sweep and every control finished
    for path in results:
        saved = read_results(path)
        tests = [e for e in saved["results"] if e["split"] == "test"]
        assert tests and all(e["metrics"]["num_images"] == 6 for e in tests)  # the dataset's own test split: 3 x 2
        assert saved["run"]["test_set"]["num_images"] == 6 and saved["skipped"] == []
        classes = tests[0]["metrics"]["classes"]
        assert len(classes) == 3
    if preset.startswith("dipsy"):  # DIPSY Table 2's controls, reported beside the method
        assert config.controls == ["real-only", "text-sd"]
        by_run = {p.parent.parent.relative_to(out).as_posix(): read_results(p) for p in results}
        real_only = by_run["controls/real-only"]["results"][0]["params"]
        assert real_only["lam"] == 1.0 and real_only["num_synthetic"] == 0 and real_only["num_real"] == 6
        assert by_run["controls/text-sd"]["config"]["generation"]["mode"] == "text"
        assert by_run["."]["config"]["generation"]["mode"] == "dual"
        page = (out / "report" / "index.html").read_text(encoding="utf-8")
        assert "controls/real-only" in page and "controls/text-sd" in page
    else:  # LGCLIP: text zero-shot CLIP and the blend beside the prototypes
        for path in results:
            tests = {e["method"]: e for e in read_results(path)["results"] if e["split"] == "test"}
            assert {"prototypes", "text", "combined"} <= set(tests)
            if config.classifier.val is not None:
                assert tests["combined"]["selected_on"] == "val"
    if config.sweep:
        status = json.loads((out / ".synthshot" / "sweep.json").read_text())["runs"]
        assert {s["status"] for s in status.values()} == {"done"} and len(status) == runs
