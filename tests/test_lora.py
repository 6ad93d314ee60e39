"""LoRA on the tiny CLIP: what is trained, the adapter format, and the checks before an adapter is
applied or resumed (another model, another architecture, other LoRA settings)."""

import json

import pytest
import torch

from synthshot.classify.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraSettings,
    add_lora,
    apply_adapter,
    check_adapter,
)
from lora_fixtures import trained_adapter
from synthshot.errors import ModelError
from synthshot.models.clip import load_clip


@pytest.fixture()
def bundle(tiny_kit, hub_options):
    return load_clip(str(tiny_kit / "clip"), hub_options)


def _trained_adapter(bundle, folder, settings=None):
    return trained_adapter(bundle, folder, settings)


def test_only_lora_matrices_of_the_chosen_towers_and_projections_train(bundle):
    settings = LoraSettings(r=4, alpha=8, targets=("q_proj", "v_proj"), towers=("vision",))
    peft_model = add_lora(bundle.model, settings)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert all(".vision_model." in name for name in trainable)
    assert {name.split(".self_attn.")[1].split(".")[0] for name in trainable} == {"q_proj", "v_proj"}
    assert not bundle.model.logit_scale.requires_grad
    layers = bundle.model.config.vision_config.num_hidden_layers
    assert len(trainable) == layers * 2 * 2  # layers x (q, v) x (A, B)


def test_adapter_is_saved_in_peft_format_and_applies_to_the_same_outputs(bundle, tiny_kit, hub_options, tmp_path):
    peft_model = _trained_adapter(bundle, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    assert (tmp_path / "adapter" / ADAPTER_WEIGHTS).is_file()

    pixels = torch.randn(2, 3, 32, 32)
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model.base_model.model.get_image_features(pixel_values=pixels).pooler_output
    fresh = load_clip(str(tiny_kit / "clip"), hub_options)
    with torch.no_grad():
        plain = fresh.model.get_image_features(pixel_values=pixels).pooler_output
    adapted = apply_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        got = adapted.model.get_image_features(pixel_values=pixels).pooler_output
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter does change the features
    assert type(adapted.model).__name__ == "CLIPModel"  # merged: a plain model again


def test_an_adapter_of_another_model_is_refused(bundle, tiny_kit, hub_options, tmp_path):
    _trained_adapter(bundle, tmp_path / "adapter")
    other = load_clip(str(tiny_kit / "clip"), hub_options)
    with torch.no_grad():  # same architecture, other weights (as openai vs laion ViT-B/16)
        other.model.vision_model.embeddings.patch_embedding.weight.mul_(1.5)
    with pytest.raises(ModelError, match=r"trained on another model.*patch_embedding"):
        apply_adapter(other, tmp_path / "adapter")


def test_an_adapter_of_another_architecture_is_refused(bundle, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    _trained_adapter(bundle, tmp_path / "adapter")
    config = CLIPConfig.from_dict(bundle.model.config.to_dict())
    config.vision_config.hidden_size = 48
    config.vision_config.intermediate_size = 96
    with pytest.raises(ModelError, match=r"adapts vision_model.* with size 32, but that layer .* has size 48"):
        check_adapter(tmp_path / "adapter", CLIPModel(config))


def test_resume_check_refuses_other_lora_settings(bundle, tiny_kit, hub_options, tmp_path):
    _trained_adapter(bundle, tmp_path / "adapter")
    fresh = load_clip(str(tiny_kit / "clip"), hub_options)
    assert check_adapter(tmp_path / "adapter", fresh.model, settings=LoraSettings())["classes"] == ["a", "b"]
    with pytest.raises(ModelError, match=r"other LoRA settings \(r=16 vs 8; targets=.*saved vs asked"):
        check_adapter(tmp_path / "adapter", fresh.model, settings=LoraSettings(r=8, targets=("q_proj", "v_proj")))


def test_a_folder_that_is_not_an_adapter_says_so(bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"is not a synthshot LoRA adapter \(adapter_config.json is missing\)"):
        apply_adapter(bundle, tmp_path / "empty")
