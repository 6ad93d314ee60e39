"""Use what a run trained: the notebook example (the Python API) runs the quickstart, then
`synthshot predict` classifies new images with each method and `synthshot export` writes a
classifier that transformers and safetensors alone load and that predicts the same."""

from __future__ import annotations

import csv
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from synthshot.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, tiny_kit):
    """The notebook example, run as CI would: the quickstart's every stage, then its cells."""
    out = tmp_path_factory.mktemp("notebook") / "run"
    old = {key: os.environ.get(key) for key in ("SYNTHSHOT_NOTEBOOK_OUT", "SYNTHSHOT_TINY_KIT")}
    os.environ.update(SYNTHSHOT_NOTEBOOK_OUT=str(out), SYNTHSHOT_TINY_KIT=str(tiny_kit))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        namespace = runpy.run_path(str(ROOT / "examples" / "notebook.py"))
    finally:
        os.chdir(cwd)
        for key, value in old.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return out, namespace


def test_the_notebook_runs_the_api_end_to_end(quickstart):
    out, namespace = quickstart
    exp = namespace["exp"]
    assert set(exp.results()) == {"evaluate", "finetune"}
    assert namespace["clf"].method == "finetune" and len(namespace["clf"].classes) == 4
    assert (out.with_name("run-export") / "synthshot_export.json").is_file()
    assert exp.run() == []  # everything done: nothing runs again


def images_of(out: Path) -> list[Path]:
    return sorted((out / "demo-data").rglob("*.png"))


@pytest.mark.parametrize("method", ["finetune", "prototypes", "text", "combined", "tip_adapter"])
def test_predict_writes_one_row_per_image_for_each_method(quickstart, tmp_path, method):
    out, _ = quickstart
    preds = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(out), str(out / "demo-data"), "--method", method,
                                      "--top-k", "2", "--output", str(preds)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == len(images_of(out)) == 32
    assert list(rows[0]) == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    assert all(float(r["probability_1"]) >= float(r["probability_2"]) for r in rows)


def test_predict_matches_the_evaluation_of_the_run(quickstart):
    """The same preprocessing as evaluation: predicting the held-out test images gives the
    run's reported test accuracy."""
    from synthshot import load_classifier
    from synthshot.experiment import Experiment

    out, namespace = quickstart
    exp = namespace["exp"]
    test = exp.classifier_sets.test
    for method in ("prototypes", "text", "combined", "tip_adapter", "finetune"):
        clf = load_classifier(out, method)
        predicted = [top[0][0] for top in clf.predict(list(test.files), top_k=1)]
        accuracy = sum(clf.classes.index(p) == label for p, label in zip(predicted, test.labels)) / len(test)
        stage = "finetune" if method == "finetune" else "evaluate"
        reported = next(e for e in exp.results()[stage]["results"] if e["method"] == method and e["split"] == "test")
        assert accuracy == pytest.approx(reported["metrics"]["top1"]), method
    assert isinstance(Experiment.from_config(out / "config.resolved.yaml"), Experiment)


def test_unreadable_images_are_reported_and_skipped_with_exit_code_3(quickstart, tmp_path):
    out, _ = quickstart
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    good = images_of(out)[:2]
    listing.write_text("\n".join([str(good[0]), str(bad), str(good[1])]) + "\n")
    preds = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(app, ["predict", str(out), str(listing), "--output", str(preds)])
    assert result.exit_code == 3
    assert "skipped" in result.output and "broken.png" in result.output
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(good[0]), str(good[1])]


def test_predict_names_the_stage_a_method_needs(quickstart, tmp_path):
    import shutil

    from synthshot.errors import DataError

    out, _ = quickstart
    partial = tmp_path / "partial"  # a copy of the run without its prototypes and fine-tuning
    shutil.copytree(out, partial, ignore=shutil.ignore_patterns("prototypes", "finetune"))
    image = images_of(out)[0]
    for method, stage in (("prototypes", "prototypes stage"), ("finetune", "finetune stage")):
        result = CliRunner().invoke(app, ["predict", str(partial), str(image), "--method", method])
        assert isinstance(result.exception, DataError) and stage in str(result.exception), result.output


def test_the_export_loads_with_transformers_alone_and_predicts_the_same(quickstart, tmp_path):
    out, _ = quickstart
    export = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(out), "--output", str(export), "--method", "finetune"])
    assert result.exit_code == 0, result.output
    card = (export / "README.md").read_text()
    assert "| method | `finetune` |" in card and "top-1 on test" in card and "## Config of the run" in card
    images = images_of(out)[:6]
    predicted = CliRunner().invoke(app, ["predict", str(export), *map(str, images), "--output",
                                         str(tmp_path / "p.jsonl"), "--top-k", "4"])
    assert predicted.exit_code == 0, predicted.output
    ours = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    script = f"""
import json, sys, torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPModel
folder = {str(export)!r}
model = CLIPModel.from_pretrained(folder).eval()
processor = CLIPImageProcessor.from_pretrained(folder)
head = load_file(folder + '/classifier.safetensors')
classes = json.load(open(folder + '/classes.json'))['classes']
pixels = processor(images=[Image.open(p).convert('RGB') for p in {[str(p) for p in images]!r}], return_tensors='pt')['pixel_values']
with torch.no_grad():
    out = model.get_image_features(pixel_values=pixels)
    f = torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
logits = head['logit_scale'] * f @ head['text_features'].T
probs = logits.softmax(-1)
assert not any(name == 'synthshot' or name.startswith('synthshot.') for name in sys.modules)
print(json.dumps([[classes[i], float(probs[r, i])] for r, i in enumerate(probs.argmax(-1).tolist())]))
"""
    alone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr
    theirs = json.loads(alone.stdout.strip().splitlines()[-1])
    assert [t[0] for t in theirs] == [row["top"][0]["class"] for row in ours]
    assert [t[1] for t in theirs] == pytest.approx([row["top"][0]["probability"] for row in ours], abs=1e-4)


def test_an_existing_export_folder_is_refused_unless_force_and_never_someone_elses(quickstart, tmp_path):
    out, _ = quickstart
    export = tmp_path / "export"
    assert CliRunner().invoke(app, ["export", str(out), "-o", str(export), "--method", "text"]).exit_code == 0
    again = CliRunner().invoke(app, ["export", str(out), "-o", str(export), "--method", "text"])
    assert "pass --force" in str(again.exception)
    assert CliRunner().invoke(app, ["export", str(out), "-o", str(export), "--method", "text", "--force"]).exit_code == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(app, ["export", str(out), "-o", str(theirs), "--force"])
    assert "not a synthshot export" in str(refused.exception)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_the_adapter_folder_has_a_real_card(quickstart):
    out, _ = quickstart
    card = (out / "finetune" / "adapter" / "README.md").read_text()
    assert "synthshot" in card and "top-1" in card and "base_model" in card


def test_images_of_any_mode_and_size_are_converted(quickstart):
    from synthshot import load_classifier

    out, _ = quickstart
    clf = load_classifier(out, "finetune")
    odd = [Image.new("L", (3, 500)), Image.new("RGBA", (1, 1)), Image.new("P", (64, 64)), Image.new("I;16", (40, 30))]
    assert [len(top) for top in clf.predict(odd, top_k=2)] == [2, 2, 2, 2]
