"""`finetune` end to end on the tiny kit and the drawn demo dataset: it learns, writes honest
results, resumes after a kill exactly where it stopped, and refuses bad input with the reason."""

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import synthshot.classify.finetune as finetune_module
from synthshot.classify.finetune import (
    ADAPTER_DIR,
    CHECKPOINTS,
    FINETUNE_DIR,
    METRICS_FILE,
)
from synthshot.classify.lora import ADAPTER_WEIGHTS
from synthshot.config import load_config
from synthshot.data.demo import SHAPES, draw_shape
from synthshot.errors import ConfigError, DataError, ModelError, SynthshotError
from synthshot.generation.items import plan_items
from synthshot.generation.runner import run_generation
from synthshot.results import read_results
from synthshot.experiment import Experiment
from synthshot.runs import run_stage
from synthshot.stages.generate import record_extra


def quiet(*_):
    pass


def make_config(out, kit, *overrides):
    """3 drawn classes, 2 shots each, 6 held-out test images per class; quick training."""
    return load_config(None, [
        f"output_dir={out}", f"models.tiny_kit={kit}", "offline=true",
        "data.demo.classes=3", "data.demo.images_per_class=8", "data.demo.size=32", "data.shots=2",
        "finetune.epochs=2", "finetune.batch_size=4", "finetune.num_workers=0", "finetune.warmup_steps=0",
        "finetune.lr=0.01", "finetune.log_every=1", "finetune.steps_per_epoch=3", "finetune.precision=fp32",
        "generation.mode=text",  # the drawn stand-in set below; its folder does not depend on the CLIP model
        *overrides,
    ])


def finetune(config, *, resume=False, restart=False, echo=quiet, progress=False):
    """The `finetune` stage as the CLI verb runs it (`--resume`, `--restart`, or neither)."""
    mode = "resume" if resume else "restart" if restart else "auto"
    return run_stage(Experiment(config), "finetune", mode=mode, echo=echo, progress=progress)


def prepare_data(config, echo=quiet):
    return Experiment(config).data


def write_synthetic(config, per_class=4, extra_classes=()):
    """A synthetic set through the real generation runner and manifest; the renderer draws the
    class's shape (a learnable stand-in for Stable Diffusion, which the tiny kit cannot make)."""
    exp = Experiment(config)
    data = exp.data
    split = {name: [str(p) for p in files] for name, files in data.split.items()}
    split.update({name: split[next(iter(split))] for name in extra_classes})
    items = plan_items(split, images_per_class=per_class, base_seed=1, prompts={k: f"a {k}" for k in split},
                       mode="text", negative_probs=None)
    def render(batch):
        return [draw_shape(i.class_name if i.class_name in SHAPES else "ring", np.random.default_rng(i.seed), 32)
                for i in batch]

    run_generation(items, render, exp.layout.synthetic, batch_size=8, progress=False, record_extra=record_extra(exp))


def prepared(tmp_path, kit, *overrides, name="out", **synthetic):
    config = make_config(tmp_path / name, kit, *overrides)
    write_synthetic(config, **synthetic)
    return config


def adapter_tensors(folder):
    return load_file(str(folder / ADAPTER_WEIGHTS))


def test_finetune_learns_and_writes_honest_results(tmp_path, tiny_kit):
    from synthshot.classify.lora import apply_adapter, read_adapter_info
    from synthshot.classify.text import text_classifier_weights
    from synthshot.data.folders import load_rgb
    from synthshot.models.clip import load_clip
    from synthshot.models.hub import HubOptions

    config = prepared(tmp_path, tiny_kit, "finetune.epochs=4", "finetune.steps_per_epoch=4", "finetune.augment=false",
                      "finetune.towers=[vision]", "finetune.lora_targets=[q_proj,v_proj]")
    results = finetune(config, echo=quiet, progress=False)
    out = config.output_dir / FINETUNE_DIR

    # The loss goes down on the learnable fixture (drawn shapes).
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    assert len([r for r in records if r["kind"] == "step"]) == 16

    # results.json: the test accuracy of the last epoch (no validation set), the config, the params.
    saved = read_results(out / "results.json")
    assert saved["stage"] == "finetune" and saved == json.loads(json.dumps(results))
    (test,) = saved["results"]
    assert test["split"] == "test" and test["selected_on"] is None and test["params"]["selected_epoch"] == 4
    assert test["metrics"]["num_images"] == 18 and test["metrics"]["classes"] == ["circle", "square", "triangle"]
    assert test["params"]["num_real"] == 6 and test["params"]["num_synthetic"] == 12
    assert saved["config"]["finetune"]["lam"] == 0.8
    assert [p.name for p in (out / CHECKPOINTS).iterdir()] == ["epoch_4"]  # only what resume needs is kept

    # The saved adapter, applied to a freshly loaded CLIP, reproduces the reported test accuracy.
    bundle = load_clip(str(tiny_kit / "clip"), HubOptions(offline=True))
    info = read_adapter_info(out / ADAPTER_DIR)
    adapted = apply_adapter(bundle, out / ADAPTER_DIR)
    text = text_classifier_weights(adapted, info["prompts"], "cpu")
    data = prepare_data(config, echo=quiet)
    held_out = [(p, i) for i, name in enumerate(info["classes"])
                for p in sorted((config.output_dir / "demo-data" / name).iterdir()) if p not in data.split[name]]
    pixels = adapted.processor(images=[load_rgb(p) for p, _ in held_out], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image = torch.nn.functional.normalize(adapted.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    predictions = (image @ text.t()).argmax(dim=1).numpy()
    accuracy = float(np.mean(predictions == np.array([label for _, label in held_out])))
    assert accuracy == pytest.approx(test["metrics"]["top1"])


def test_validation_chooses_the_epoch_and_test_is_reported(tmp_path, tiny_kit):
    val_root = tmp_path / "val-images"
    for index, shape in enumerate(["circle", "square", "triangle"]):
        rng = np.random.default_rng([99, index])
        for i in range(2):
            (val_root / shape).mkdir(parents=True, exist_ok=True)
            draw_shape(shape, rng, 32).save(val_root / shape / f"{i}.png")
    config = prepared(tmp_path, tiny_kit, "finetune.towers=[vision]", "finetune.lr=0.05",
                      "finetune.val.source=folder", f"finetune.val.root={val_root}")
    results = finetune(config, echo=quiet, progress=False)
    by_split = {entry["split"]: entry for entry in results["results"]}
    assert set(by_split) == {"test", "val"}
    assert by_split["test"]["selected_on"] == "val" and by_split["test"]["metrics"]["num_images"] == 18
    assert by_split["val"]["metrics"]["num_images"] == 6
    history = [json.loads(line) for line in (config.output_dir / FINETUNE_DIR / METRICS_FILE).read_text().splitlines()]
    val_top1 = {r["epoch"]: r["val_top1"] for r in history if r["kind"] == "epoch"}
    chosen = by_split["test"]["params"]["selected_epoch"]
    assert val_top1[chosen] == max(val_top1.values()) and chosen == min(e for e, v in val_top1.items()
                                                                         if v == max(val_top1.values()))
    assert by_split["val"]["metrics"]["top1"] == pytest.approx(val_top1[chosen])


def test_clip_lora_recipe_runs_its_iterations_and_keeps_the_last_epoch(tmp_path, tiny_kit):
    """finetune.recipe=clip-lora: 500 x shots iterations (scaled down here with an explicit
    iterations_per_shot, which wins over the recipe), split into the epochs, the last adapter kept
    even with validation data; its LoRA rank and targets; the images cycled past one pass."""
    val_root = tmp_path / "val-images"
    for index, shape in enumerate(["circle", "square", "triangle"]):
        (val_root / shape).mkdir(parents=True)
        draw_shape(shape, np.random.default_rng([7, index]), 32).save(val_root / shape / "0.png")
    config = prepared(tmp_path, tiny_kit, "finetune.recipe=clip-lora", "finetune.iterations_per_shot=6",
                      "finetune.epochs=3", "finetune.batch_size=4", "finetune.precision=fp32",
                      "finetune.val.source=folder", f"finetune.val.root={val_root}")
    assert config.finetune.steps_per_epoch == 3  # from make_config: set explicitly, but iterations rule the length
    results = finetune(config, echo=quiet, progress=False)
    test = next(e for e in results["results"] if e["split"] == "test")
    params = test["params"]
    assert params["recipe"] == "clip-lora" and params["steps"] == 12  # 6 x 2 shots, 4 steps per epoch
    assert params["selected_epoch"] == 3 and params["select"] == "last" and test["selected_on"] is None
    assert (params["lora_r"], params["lora_alpha"], params["lora_dropout"]) == (2, 1, 0.25)
    assert params["lora_targets"] == ["k_proj", "q_proj", "v_proj"] and params["lr"] == 0.01  # set by make_config
    steps = [json.loads(line) for line in (config.output_dir / FINETUNE_DIR / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == list(range(1, 13))


def test_text_features_are_computed_once_when_only_the_vision_tower_trains(tmp_path, tiny_kit, monkeypatch):
    calls = {"n": 0}
    real = finetune_module.encode_class_prompts

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "encode_class_prompts", counted)
    config = prepared(tmp_path, tiny_kit, "finetune.towers=[vision]", "finetune.epochs=2", name="vision")
    finetune(config, echo=quiet, progress=False)
    assert calls["n"] == 1  # 6 steps and two evaluations: one encoding of the class prompts
    calls["n"] = 0
    finetune(prepared(tmp_path, tiny_kit, "finetune.towers=[vision,text]", "finetune.epochs=2", name="both"),
             echo=quiet, progress=False)
    assert calls["n"] >= 6  # the text tower trains: every step encodes them under autograd


def test_trackers_get_the_curves_and_the_results(tmp_path, tiny_kit, monkeypatch):
    """finetune.trackers: accelerate's trackers get every step, every epoch and the results; a
    tracker whose package is missing is a one-line error naming it."""
    logged, started = [], []

    class Recorder:
        def log(self, values, step=None):
            logged.append((step, dict(values)))

        def finish(self):
            logged.append(("finished", {}))

    def make(names, out, run_name, config):
        started.append(list(names))
        return finetune_module.Trackers([Recorder()])

    config = prepared(tmp_path, tiny_kit, "finetune.epochs=2", "finetune.trackers=[tensorboard]")
    with pytest.raises(ConfigError, match=r"finetune.trackers names tensorboard, whose package is not installed: pip "
                                          r"install tensorboard"):
        finetune(config, echo=quiet, progress=False)
    monkeypatch.setattr(finetune_module, "make_trackers", make)
    finetune(config, restart=True, echo=quiet, progress=False)
    assert started == [["tensorboard"]]
    steps = [values for step, values in logged if "train/loss" in values]
    assert len(steps) == 6 and all({"train/lr", "train/images_per_s"} <= set(v) for v in steps)
    assert [step for step, values in logged if "epoch/loss" in values] == [3, 6]
    assert "results/test/top1" in logged[-2][1] and logged[-1][0] == "finished"


def test_resume_after_a_kill_continues_to_the_uninterrupted_result(tmp_path, tiny_kit, monkeypatch):
    straight = prepared(tmp_path, tiny_kit, name="straight")
    expected = finetune(straight, echo=quiet, progress=False)

    killed = prepared(tmp_path, tiny_kit, name="killed")
    original = finetune_module.save_checkpoint

    def save_then_die(folder, *args, **kwargs):
        original(folder, *args, **kwargs)
        if folder.name == "epoch_1":
            raise KeyboardInterrupt  # a kill right after the first checkpoint

    monkeypatch.setattr(finetune_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(killed, echo=quiet, progress=False)
    monkeypatch.undo()
    out = killed.output_dir / FINETUNE_DIR
    assert [p.name for p in (out / CHECKPOINTS).iterdir()] == ["epoch_1"] and not (out / "results.json").exists()

    lines = []  # the same settings and data: the run continues (with or without --resume)
    resumed = finetune(killed, echo=lines.append, progress=False)
    assert any("resuming from" in line and "epoch 1 of 2 done" in line for line in lines)
    a = adapter_tensors(straight.output_dir / FINETUNE_DIR / ADAPTER_DIR)
    b = adapter_tensors(out / ADAPTER_DIR)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["results"][0]["metrics"]["top1"] == expected["results"][0]["metrics"]["top1"]
    straight_log = (straight.output_dir / FINETUNE_DIR / METRICS_FILE).read_text().splitlines()
    resumed_log = (out / METRICS_FILE).read_text().splitlines()
    losses = [[json.loads(line)["loss"] for line in log] for log in (straight_log, resumed_log)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)  # the same steps, logged once each


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_kit, monkeypatch):
    config = prepared(tmp_path, tiny_kit)
    original = finetune_module.write_trainer_state

    def disk_full_at_epoch_2(folder, state, optimizer):
        if state["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(folder, state, optimizer)

    monkeypatch.setattr(finetune_module, "write_trainer_state", disk_full_at_epoch_2)
    with pytest.raises(SynthshotError, match="disk is full while saving checkpoint epoch_2.*rerun with --resume"):
        finetune(config, echo=quiet, progress=False)
    monkeypatch.undo()
    checkpoints = config.output_dir / FINETUNE_DIR / CHECKPOINTS
    assert [p.name for p in checkpoints.iterdir()] == ["epoch_1"]  # no half-written folder either
    assert json.loads((checkpoints / "epoch_1" / "trainer_state.json").read_text())["epoch"] == 1
    finetune(config, resume=True, echo=quiet, progress=False)
    assert [p.name for p in checkpoints.iterdir()] == ["epoch_2"]


def test_resume_refuses_a_checkpoint_of_other_lora_settings_or_another_model(tmp_path, tiny_kit):
    config = prepared(tmp_path, tiny_kit, "finetune.epochs=1", "finetune.steps_per_epoch=1")
    finetune(config, echo=quiet, progress=False)

    other_lora = config.model_copy(update={"finetune": config.finetune.model_copy(update={"lora_r": 8})})
    with pytest.raises(ModelError, match=r"other LoRA settings \(r=16 vs 8"):
        finetune(other_lora, resume=True, echo=quiet, progress=False)

    from transformers import CLIPModel

    other_clip = tmp_path / "other-clip"
    model = CLIPModel.from_pretrained(tiny_kit / "clip")
    with torch.no_grad():
        model.text_projection.weight.mul_(-1)
    model.save_pretrained(other_clip)
    for path in (tiny_kit / "clip").iterdir():  # the same tokenizer and image processor
        if not (other_clip / path.name).exists():
            (other_clip / path.name).write_bytes(path.read_bytes())
    models = Experiment(config).config.models.model_copy(update={"tiny_kit": None, "clip": str(other_clip)})
    with pytest.raises(ModelError, match=r"trained on another model.*text_projection"):
        finetune(config.model_copy(update={"models": models}), resume=True, echo=quiet, progress=False)

    changed = config.model_copy(update={"finetune": config.finetune.model_copy(update={"lr": 0.02})})
    with pytest.raises(ConfigError, match=r"finetune settings changed \(lr=0.01 then, 0.02 now\)"):
        finetune(changed, resume=True, echo=quiet, progress=False)


@pytest.mark.parametrize("damaged", [ADAPTER_WEIGHTS, "optimizer.safetensors"])
def test_a_damaged_or_pickled_checkpoint_file_is_a_one_line_error_on_resume(tmp_path, tiny_kit, damaged):
    """Garbage or a pickle where a safetensors file belongs: named, never unpickled, no traceback."""
    import pickle

    config = prepared(tmp_path, tiny_kit, "finetune.epochs=1", "finetune.steps_per_epoch=1")
    finetune(config, echo=quiet, progress=False)
    checkpoint = config.output_dir / FINETUNE_DIR / CHECKPOINTS / "epoch_1"
    for payload in (b"\x00garbage" * 10, pickle.dumps({"w": torch.zeros(2)})):
        (checkpoint / damaged).write_bytes(payload)
        with pytest.raises(SynthshotError, match=rf"{damaged}' is not a valid safetensors file") as info:
            finetune(config, resume=True, echo=quiet, progress=False)
        assert "\n" not in str(info.value)


def test_synthetic_classes_must_match_the_real_split(tmp_path, tiny_kit):
    config = prepared(tmp_path, tiny_kit, extra_classes=["hexagon"])
    with pytest.raises(DataError, match=r"class\(es\) that the classifier does not know: 'hexagon'"):
        finetune(config, echo=quiet, progress=False)


def test_an_empty_synthetic_set_needs_lambda_one(tmp_path, tiny_kit):
    config = make_config(tmp_path / "out", tiny_kit, "finetune.epochs=1", "finetune.steps_per_epoch=1")
    with pytest.raises(DataError, match=r"lam=0.8 gives the synthetic images weight 0.2, but there are none.*lam=1"):
        finetune(config, echo=quiet, progress=False)
    # Real images only; gradient checkpointing on, to run that code path too.
    real_only = config.model_copy(update={"finetune": config.finetune.model_copy(
        update={"lam": 1.0, "gradient_checkpointing": True})})
    (entry,) = finetune(real_only, echo=quiet, progress=False)["results"]
    assert entry["params"]["num_synthetic"] == 0 and entry["params"]["lam"] == 1.0


def test_validation_that_overlaps_the_test_set_is_refused(tmp_path, tiny_kit):
    config = prepared(tmp_path, tiny_kit, "finetune.val.source=heldout")
    with pytest.raises(ConfigError, match="finetune.val and finetune.test share 18 image"):
        finetune(config, echo=quiet, progress=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("finetune.lam=1.5", "key finetune.lam: input should be less than or equal to 1"),
        ("finetune.lam=-0.1", "key finetune.lam: input should be greater than or equal to 0"),
        ("finetune.lr=0", "key finetune.lr: input should be greater than 0"),
        ("finetune.lr=2", "key finetune.lr: input should be less than 1"),
        ("finetune.batch_size=5", "batch_size must be even"),
        ("finetune.towers=[]", "key finetune.towers"),
    ],
)
def test_out_of_range_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_cli_finetune_trains_and_writes_results(tmp_path, tiny_kit):
    config = prepared(tmp_path, tiny_kit)
    overrides = [f"{k}={v}" for k, v in {
        "models.tiny_kit": tiny_kit, "data.demo.classes": 3, "data.demo.images_per_class": 8, "data.demo.size": 32,
        "data.shots": 2, "finetune.epochs": 1, "finetune.steps_per_epoch": 2, "finetune.batch_size": 4,
        "finetune.num_workers": 0, "finetune.warmup_steps": 0, "generation.mode": "text"}.items()]
    args = [sys.executable, "-m", "synthshot.cli", "finetune", "--offline", "-o", str(config.output_dir)]
    for override in overrides:
        args += ["--set", override]
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "test top-1" in result.stdout and "training in fp32" in result.stdout
    assert read_results(config.output_dir / FINETUNE_DIR / "results.json")["results"][0]["split"] == "test"
