"""`synthshot run`: stage fingerprints and skipping, sweeps, presets, data sources."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from synthshot.config import list_presets, load_config
from synthshot.data.coop import load_coop_split
from synthshot.data.labelled import load_labelled_images
from synthshot.errors import ConfigError, DataError
from synthshot.runs import expand_sweep, read_state, run_stages, stage_fingerprints, sweep_table
from synthshot.experiment import Experiment


def quiet(*_):
    pass


def stage_fingerprints_of(config):
    return stage_fingerprints(Experiment(config))


def prepare_data(config, echo=quiet):
    return Experiment(config).data


def test_fingerprints_follow_what_each_stage_reads():
    base = load_config(None, ["stages=[data,similarity,generate,features,evaluate]"])
    prints = stage_fingerprints_of(base)
    changed = stage_fingerprints_of(load_config(None, ["stages=[data,similarity,generate,features,evaluate]",
                                                    "classifier.combine_weight=0.3"]))
    assert changed["evaluate"] != prints["evaluate"]
    assert {s: changed[s] for s in ("data", "similarity", "generate", "features")} == {
        s: prints[s] for s in ("data", "similarity", "generate", "features")
    }
    shots = stage_fingerprints_of(load_config(None, ["stages=[data,similarity,generate,features,evaluate]", "data.shots=4"]))
    assert all(shots[s] != prints[s] for s in ("data", "similarity", "generate", "features", "evaluate"))


def test_run_skips_finished_stages_and_reruns_what_changed(tmp_path, tiny_kit):
    overrides = [
        f"output_dir={tmp_path / 'out'}", f"models.tiny_kit={tiny_kit}", "data.demo.classes=2",
        "data.demo.images_per_class=2", "data.demo.size=32", "data.shots=1", "generation.images_per_class=1",
        "generation.steps=1", "generation.height=32", "generation.width=32", "generation.precision=fp32",
        "stages=[data,similarity,generate]",
    ]
    config = load_config(None, overrides)
    assert run_stages(config, echo=quiet) == ["data", "similarity", "generate"]
    assert run_stages(config, echo=quiet) == []
    assert set(read_state(config.output_dir)) == {"data", "similarity", "generate"}
    more = load_config(None, [*overrides, "generation.images_per_class=2"])
    assert run_stages(more, echo=quiet) == ["generate"]
    manifest = (Experiment(config).layout.synthetic / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 4  # the two first images were kept, two more added
    (config.output_dir / "similarity" / "similarity.safetensors").unlink()
    assert run_stages(more, echo=quiet) == ["similarity"]  # outputs gone: redone even if the config is the same


def test_sweep_expands_names_and_shares_the_synthetic_set(tmp_path):
    config = load_config(None, [
        f"output_dir={tmp_path}", "stages=[data,similarity,generate,evaluate]",
        "sweep={generation.images_per_class: [10, 20], generation.w_neg: [0.0, 6.0]}",
    ])
    runs = expand_sweep(config)
    names = [r.output_dir.name for r in runs]
    assert names == ["images_per_class=10,w_neg=0.0", "images_per_class=10,w_neg=6.0",
                     "images_per_class=20,w_neg=0.0", "images_per_class=20,w_neg=6.0"]
    by = {(r.generation.images_per_class, r.generation.w_neg): r for r in runs}
    # More images per class extend the same set; another guidance scale is another set.
    assert by[10, 0.0].synthetic_dir == by[20, 0.0].synthetic_dir
    assert by[10, 0.0].synthetic_dir != by[10, 6.0].synthetic_dir
    assert by[10, 0.0].synthetic_dir.parent == tmp_path / "shared"
    assert {r.prompts.cache_dir for r in runs} == {tmp_path / "shared" / "prompts-cache"}  # one LLM answer per class


def test_sweep_that_would_overwrite_a_run_is_refused(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "sweep={models.clip: [a/ViT-B, b/ViT-B]}"])
    with pytest.raises(ConfigError, match="would both write"):
        expand_sweep(config)
    with pytest.raises(ConfigError, match="unknown key generation.imges_per_class: did you mean"):
        expand_sweep(load_config(None, [f"output_dir={tmp_path}", "sweep={generation.imges_per_class: [1, 2]}"]))


def test_every_preset_loads_and_names_a_dataset():
    names = list_presets()
    dipsy = ["dtd", "food101", "oxford_pets", "sun397", "eurosat", "fgvc_aircraft", "imagenet", "oxford_flowers",
             "stanford_cars", "caltech101"]
    lgclip = ["cub", "oxford_flowers", "oxford_pets", "food101", "imagenet", "eurosat"]
    assert {f"dipsy-{d}" for d in dipsy} | {f"lgclip-{d}" for d in lgclip} <= set(names)
    for name in names:
        config = load_config(name)
        if name in {f"dipsy-{d}" for d in dipsy}:
            assert config.data.dataset == name[6:] and config.data.shots == 16
            assert config.generation.images_per_class == 200 and config.finetune.lam == 0.8
            assert (config.generation.w_text, config.generation.w_pos, config.generation.w_neg) == (7.5, 6.0, 6.0)
        if name in {f"lgclip-{d}" for d in lgclip}:
            assert config.data.shots == 0 and config.generation.mode == "text" and config.features.multiscale
            assert len(expand_sweep(config)) == 4  # four CLIP backbones


def test_unknown_preset_stage_and_dataset_suggest_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'dipsy-dtdd': did you mean 'dipsy-dtd'"):
        load_config(None, ["preset=dipsy-dtdd"])
    with pytest.raises(ConfigError, match="unknown preset 'lgclip-cubb': did you mean 'lgclip-cub'"):
        load_config("lgclip-cubb")  # `synthshot run lgclip-cubb`
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="did you mean 'evaluate'"):
        load_config(None, ["stages=[data, evalute]"])
    with pytest.raises(ConfigError, match="did you mean 'eurosat'"):
        load_config(None, ["data.dataset=eurosa"])


def test_sweep_table_lists_test_results(tmp_path):
    from synthshot.classify.metrics import classification_metrics
    from synthshot.results import make_results, write_results

    for name, pred in (("a", [0, 1]), ("b", [0, 0])):
        entry = {"method": "prototypes", "split": "test", "metrics": classification_metrics([0, 1], pred, ["x", "y"])}
        write_results(tmp_path / name / "evaluate", make_results("evaluate", [entry]))
    table = sweep_table(tmp_path)
    assert "a" in table and "100.00%" in table and "50.00%" in table


# ------------------------------------------------------------------------------ data sources
def write_coop_dataset(root, rows_by_split):
    for rows in rows_by_split.values():
        for path, label, _ in rows:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (label * 40, 0, 0)).save(root / path)
    (root / "synthshot").mkdir(parents=True, exist_ok=True)
    (root / "synthshot" / "split_coop.json").write_text(json.dumps(rows_by_split))


def coop_rows(split, per_class):
    return [[f"img/{name}/{split}{i}.png", label, name] for label, name in enumerate(["annual crop", "forest"])
            for i in range(per_class)]


def test_coop_layout_draws_shots_from_the_train_split_and_tests_on_test(tmp_path):
    root = tmp_path / "eurosat"
    write_coop_dataset(root, {"train": coop_rows("train", 3), "val": coop_rows("val", 1), "test": coop_rows("test", 2)})
    config = load_config(None, [f"output_dir={tmp_path / 'out'}", f"data.root={root}", "data.layout=coop", "data.shots=2"])
    data = prepare_data(config, echo=quiet)
    assert list(data.split) == ["annual crop", "forest"]
    assert all(len(files) == 2 and all("train" in f.name for f in files) for files in data.split.values())
    gathered = Experiment(load_config(None, [f"output_dir={tmp_path / 'out'}", f"data.root={root}", "data.layout=coop",
                                             "data.shots=2", "classifier.test.source=coop"])).classifier_sets
    assert len(gathered.test) == 4 and all("test" in f.name for f in gathered.test.files)
    assert gathered.test.labels == [0, 0, 1, 1]


def test_coop_split_errors_name_the_problem(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": [["a.png", 0, "cat"], ["b.png", 0, "dog"]]}))
    with pytest.raises(DataError, match="label 0 is named both 'cat' and 'dog'"):
        load_coop_split(path)
    path.write_text(json.dumps({"train": [["a.png", 1, "cat"]]}))
    with pytest.raises(DataError, match=r"labels must be 0..N-1; missing \[0\]"):
        load_coop_split(path)
    path.write_text(json.dumps({"train": [["a.png", "x", "cat"]]}))
    with pytest.raises(DataError, match=r"train\[0\]"):
        load_coop_split(path)


def test_zero_shot_takes_class_names_from_the_registry(tmp_path):
    data = prepare_data(load_config(None, [f"output_dir={tmp_path}", "data.dataset=eurosat", "data.shots=0"]), echo=quiet)
    assert data.split_file is None and len(data.split) == 10 and all(v == [] for v in data.split.values())


def test_test_images_of_unknown_classes_are_refused(tmp_path):
    from synthshot.config import EvalDataConfig

    for name in ("cat", "zebra"):
        (tmp_path / "test" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "test" / name / "1.png")
    source = EvalDataConfig(source="folder", root=tmp_path / "test")
    with pytest.raises(DataError, match="'zebra'"):
        load_labelled_images(source, ["cat", "dog"], {"cat": "cat", "dog": "dog"})
    images = load_labelled_images(source, ["cat", "dog", "zebra"], {})
    assert images.labels == [0, 2]
