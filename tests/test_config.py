"""Typed configs: YAML + overrides, one-line errors naming the key and the closest valid key."""

import pytest
import yaml

from synthshot.config import RunConfig, load_config, write_resolved_config
from synthshot.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_follow_the_paper():
    config = load_config()
    g = config.generation
    assert (g.w_text, g.w_pos, g.w_neg, g.ip_adapter_scale, g.steps, g.scheduler) == (7.5, 6.0, 6.0, 0.6, 50, "dpm")
    assert config.similarity.temperature == 0.4 and config.similarity.method == "class_mean"
    assert config.data.shots == 16


def test_file_and_overrides(tmp_path):
    path = write(tmp_path, "generation:\n  steps: 20\ndata:\n  shots: 4\n")
    config = load_config(path, ["generation.steps=5", "generation.template=A photo of a {} pet", "stages=[data]"])
    assert config.generation.steps == 5
    assert config.data.shots == 4
    assert config.generation.template == "A photo of a {} pet"
    assert config.stages == ["data"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("generation.stpes=3", "unknown key generation.stpes: did you mean generation.steps?"),
        ("similarity.temprature=1", "did you mean similarity.temperature?"),
        ("genration.steps=3", "did you mean generation?"),
        ("generation.steps=many", "key generation.steps: input should be a valid integer"),
        ("generation.w_neg=-1", "key generation.w_neg: input should be greater than or equal to 0"),
        ("generation.mode=triple", "key generation.mode"),
        ("generation.template=no slot", "has no '{}'"),
        ("similarity.temperature=0", "key similarity.temperature"),
        ("justtext", "is not of the form key.path=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "data:\n  shots: 4\n  shotz: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key data.shotz: did you mean data.shots\?"):
        load_config(path)


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "data:\n  shots: [4,\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML at line \d+"):
        load_config(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["generation.steps=7", "data.demo.classes=3"])
    path = write_resolved_config(config, tmp_path)
    again = RunConfig.model_validate(yaml.safe_load(path.read_text()))
    assert again == config


def test_a_finetune_recipe_fills_only_the_keys_the_config_leaves_out(tmp_path):
    config = load_config(None, ["finetune.recipe=clip-lora", "finetune.lr=0.001"])
    ft = config.finetune
    assert (ft.lora_r, ft.lora_alpha, ft.lora_dropout, ft.min_lr, ft.warmup_steps) == (2, 1, 0.25, 1e-6, 0)
    assert ft.lr == 0.001 and ft.select == "last" and ft.iterations_per_shot == 500
    assert ft.total_iterations(shots=4) == 2000
    default = load_config(None, []).finetune
    assert (default.recipe, default.lora_r, default.select, default.total_iterations(4)) == ("datadream", 16, "val", None)
    # A file that names the recipe and sets a key itself: the key wins.
    path = tmp_path / "c.yaml"
    path.write_text("finetune: {recipe: clip-lora, lora_r: 8}\n")
    assert load_config(path).finetune.lora_r == 8


def test_a_sweep_over_recipes_gives_each_run_its_recipe(tmp_path):
    from synthshot.runs import expand_sweep

    config = load_config(None, [f"output_dir={tmp_path}", "finetune.weight_decay=0.5",
                                "sweep={finetune.recipe: [datadream, clip-lora]}"])
    datadream, clip_lora = (run.finetune for run in expand_sweep(config))
    assert (datadream.lora_r, datadream.lr, datadream.select) == (16, 1e-4, "val")
    assert (clip_lora.lora_r, clip_lora.lr, clip_lora.select) == (2, 2e-4, "last")
    assert datadream.weight_decay == clip_lora.weight_decay == 0.5  # set by the user: kept in both
