"""The config reference: every key documented in the models themselves, `docs/config.md` generated
from them and kept up to date, and `synthshot config --explain`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from synthshot.cli import app
from synthshot.config import RunConfig, _section_type
from synthshot.errors import ConfigError

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"
REGENERATE = "python -m synthshot.config_reference > docs/config.md"


def _sections(model: type[BaseModel], prefix: str = ""):
    """(dotted prefix, section model) of the root model and every section nested in it."""
    yield prefix, model
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if isinstance(section, type) and issubclass(section, BaseModel):
            yield from _sections(section, f"{prefix}{name}.")


def test_every_field_of_every_section_has_a_description():
    missing = []
    for prefix, model in _sections(RunConfig):
        for name, field in model.model_fields.items():
            section = _section_type(field.annotation)
            is_section = isinstance(section, type) and issubclass(section, BaseModel)
            # A section may be described by its class docstring instead.
            if not (field.description or "").strip() and not (is_section and (section.__doc__ or "").strip()):
                missing.append(f"{prefix}{name}")
    assert not missing, f"config fields without Field(description=...): {', '.join(missing)}"


def test_docs_config_md_is_up_to_date():
    from synthshot.config_reference import reference_markdown

    expected = reference_markdown()
    found = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert found == expected, f"docs/config.md is out of date: regenerate it with `{REGENERATE}`"


def test_config_keys_give_types_and_defaults_as_a_user_writes_them():
    from synthshot.config_reference import config_keys

    keys = {info.key: info for info in config_keys()}
    assert (keys["generation.steps"].type, keys["generation.steps"].default) == ("int >= 1", "50")
    assert keys["generation.mode"].type == '"dual" | "single" | "text"'
    assert (keys["finetune.lam"].type, keys["finetune.lam"].default) == ("float in [0, 1]", "0.8")
    assert keys["finetune.lora_dropout"].type == "float in [0, 1)"
    assert keys["data.demo.classes"].type == "int in [2, 8]"
    assert keys["finetune.tensorboard"].type == "bool" and keys["finetune.tensorboard"].default == "false"
    assert keys["models.tiny_kit"].type == "path | null" and keys["models.tiny_kit"].default == "null"
    assert keys["data.holdout_shots"].type == "int >= 1 | null"
    assert keys["features.scales"].type == "list[int]"
    assert keys["features.scales"].default == "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    assert keys["classifier.methods"].default == "[prototypes, text, combined, tip_adapter]"
    assert keys["finetune.towers"].type == 'non-empty list["vision" | "text"]'
    assert keys["sweep"].type == "dict[str, list] | null"
    assert keys["output_dir"].default == "runs/default"
    assert keys["finetune.crop_scale"].type == "tuple[float, float]"
    # Nested and optional sections are recursed into; every key has a meaning.
    assert {"classifier.test.source", "classifier.val.split", "finetune.val.max_per_class"} <= set(keys)
    assert all(info.description for info in keys.values())


def test_explain_a_key_a_section_and_an_unknown_key():
    from synthshot.config_reference import explain

    text = explain("generation.steps")
    assert text.startswith("generation.steps") and "int >= 1" in text and "50" in text
    assert "generation.w_text" not in text
    section = explain("finetune")
    assert "finetune.tensorboard" in section and "finetune.val.source" in section
    assert all(line.startswith(("finetune:", "finetune.", "  ")) for line in section.splitlines() if line)
    everything = explain()
    assert all(key in everything for key in ("synthetic_dir", "data.skip_corrupt", "generation.prompt_cycle"))
    with pytest.raises(ConfigError, match=r"unknown key generation\.stpes: did you mean generation\.steps\?"):
        explain("generation.stpes")


def test_cli_config_explain():
    runner = CliRunner()
    result = runner.invoke(app, ["config", "--explain", "generation.steps"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("generation.steps") and "int >= 1" in result.stdout

    result = runner.invoke(app, ["config", "--explain", "finetune"])
    assert result.exit_code == 0 and "finetune.tensorboard" in result.stdout
    assert not any(line.startswith("data.") for line in result.stdout.splitlines())

    result = runner.invoke(app, ["config", "--explain"])
    assert result.exit_code == 0 and "finetune.tensorboard" in result.stdout and "models.clip" in result.stdout

    result = runner.invoke(app, ["config", "--explain", "finetune.tensorbord"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "finetune.tensorboard" in lines[0] and lines[0].startswith("error: ")

    # The resolved config is printed as before.
    result = runner.invoke(app, ["config", "--set", "generation.steps=3"])
    assert result.exit_code == 0 and "steps: 3" in result.stdout
