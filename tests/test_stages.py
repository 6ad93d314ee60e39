"""The stages end to end on the tiny kit and the drawn demo dataset."""

import json

import pytest
import yaml
from PIL import Image

from synthshot.config import load_config
from synthshot.errors import DataError, SynthshotError
from synthshot.generation.runner import MANIFEST
from synthshot.generation.similarity import SimilarityResult
from synthshot.experiment import Experiment
from synthshot.runs import run, run_stage


def prepare_data(config, echo=None):
    return Experiment(config).data


def generate(config, **options):
    return run_stage(Experiment(config), "generate", **options)


def set_folder(config):
    """The synthetic set the run's images go to (keyed by the settings they depend on)."""
    return Experiment(config).layout.synthetic


def small_config(tmp_path, kit, **sections):
    overrides = [
        f"output_dir={tmp_path / 'out'}",
        f"models.tiny_kit={kit}",
        "data.demo.classes=3",
        "data.demo.images_per_class=3",
        "data.demo.size=32",
        "data.shots=2",
        "generation.images_per_class=2",
        "generation.steps=2",
        "generation.height=32",
        "generation.width=32",
        "generation.batch_size=3",
        "generation.precision=fp32",
    ]
    overrides += [f"{k}={v}" for k, v in sections.items()]
    return load_config(None, overrides)


def quiet(*_):
    pass


def test_run_writes_every_stage_output_and_resumes(tmp_path, tiny_kit):
    config = small_config(tmp_path, tiny_kit)
    run(config, echo=quiet)
    out = config.output_dir
    split = json.loads((out / "splits" / "demo_shot2_seed1.json").read_text())
    assert sorted(split["classes"]) == ["circle", "square", "triangle"]
    assert all(len(v) == 2 for v in split["classes"].values())
    similarity = SimilarityResult.load(out / "similarity")
    assert similarity.classes == ["circle", "square", "triangle"]
    assert (out / "similarity" / "negatives.csv").is_file()

    images = set_folder(config)
    assert images.parent == out and images.name.startswith("synthetic-")
    records = [json.loads(line) for line in (images / MANIFEST).read_text().splitlines()]
    assert len(records) == 6
    root = out / "demo-data"
    for record in records:
        image = Image.open(images / record["file"])
        assert image.size == (32, 32)
        assert record["negative_class"] != record["class_name"]
        assert record["positive_file"] in [str(root / f) for f in split["classes"][record["class_name"]]]
        assert record["negative_file"] in [str(root / f) for f in split["classes"][record["negative_class"]]]
        assert record["prompt"] == f"A photo of a {record['class_name']}"
        assert record["scales"] == {"w_text": 7.5, "w_pos": 6.0, "w_neg": 6.0, "ip_adapter_scale": 0.6}
        assert record["scheduler"] == "dpm" and record["steps"] == 2 and record["mode"] == "dual"
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["models"]["diffusion"].endswith("stable-diffusion")

    # A rerun finds everything finished.
    report = generate(config, progress=False, echo=quiet)
    assert report.done == [] and len(report.skipped) == 6

    # More images per class extends the set: the first ones are kept as they are.
    before = {r["id"]: (images / r["file"]).read_bytes() for r in records}
    more = config.model_copy(update={"generation": config.generation.model_copy(update={"images_per_class": 3})})
    report = generate(more, progress=False, echo=quiet)
    assert len(report.done) == 3 and len(report.skipped) == 6
    assert all((images / r["file"]).read_bytes() == before[r["id"]] for r in records)


def test_unreadable_positive_image_fails_its_items_only(tmp_path, tiny_kit):
    config = small_config(tmp_path, tiny_kit, **{"generation.mode": "single", "stages": "[data]"})
    data = prepare_data(config, echo=quiet)
    broken = data.split["square"][0]
    broken.write_bytes(b"not an image")
    with pytest.raises(SynthshotError, match=r"failed.*square-\d+.*not a readable image") as info:
        generate(config, progress=False, echo=quiet)
    assert str(broken) in str(info.value)
    records = [json.loads(line) for line in (set_folder(config) / MANIFEST).read_text().splitlines()]
    failed_ids = {r["id"] for r in records if r["positive_file"] == str(broken)}
    assert not failed_ids  # nothing was written for the failed items
    assert {r["class_name"] for r in records} >= {"circle", "triangle"}


def test_dual_mode_with_one_class_suggests_single(tmp_path, tiny_kit):
    root = tmp_path / "one"
    (root / "cat").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(root / "cat" / f"{i}.png")
    config = small_config(tmp_path, tiny_kit)
    config = config.model_copy(update={"data": config.data.model_copy(update={"demo": None, "root": root})})
    with pytest.raises(DataError, match="use generation.mode=single"):
        generate(config, progress=False, echo=quiet)


def test_text_mode_needs_no_adapters_and_uses_the_registry_template(tmp_path, tiny_kit):
    root = tmp_path / "eurosat"
    for folder in ("AnnualCrop", "Forest"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (16, 16), (0, 90, 0)).save(root / folder / "a.png")
    config = small_config(tmp_path, tiny_kit, **{"generation.mode": "text", "data.shots": 1, "data.dataset": "eurosat"})
    config = config.model_copy(update={"data": config.data.model_copy(update={"demo": None, "root": root})})
    generate(config, progress=False, echo=quiet)
    records = [json.loads(line) for line in (set_folder(config) / MANIFEST).read_text().splitlines()]
    assert {r["prompt"] for r in records} == {"A satellite photo of an Annual Crop Land", "A satellite photo of a Forest"}
    assert all(r["positive_file"] is None and "ip_adapter" not in r["settings"]["models"] for r in records)
