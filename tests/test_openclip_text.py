"""The text classifier of open_clip models, on a tiny random model built from a custom config.

Runs only where open_clip imports (it needs a working torchvision); any failure to import it,
not just a missing package, skips the module.
"""

from __future__ import annotations

import json

import pytest

try:
    import open_clip
except Exception as exc:  # noqa: BLE001 - e.g. torchvision's "operator torchvision::nms does not exist"
    pytest.skip(f"open_clip does not import here ({exc.__class__.__name__}: {exc})", allow_module_level=True)

import torch
import torch.nn.functional as F

from synthshot.errors import ConfigError
from synthshot.features.backends import OpenClipImageEncoder, load_image_encoder
from synthshot.models.hub import HubOptions

TINY = "synthshot-tiny-text"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = {"cat": ["a photo of a cat.", "a blurry photo of a cat."], "dog": ["a photo of a dog."]}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random open_clip model (registered under its config's file name), loaded by name."""
    path = tmp_path_factory.mktemp("open_clip_configs") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return load_image_encoder(f"open_clip:{TINY}", HubOptions(offline=True))  # no tag: random weights


def prompt_features(encoder, texts):
    with torch.no_grad():
        return F.normalize(encoder.model.encode_text(open_clip.get_tokenizer(TINY)(texts)).float(), dim=-1)


def test_open_clip_text_classifier_is_normalised_class_by_embedding(encoder):
    assert encoder.backend == "open_clip" and encoder.has_text_tower and encoder.dim == 32
    weights = encoder.text_classifier(PROMPTS)
    assert weights.shape == (2, 32) and weights.dtype == torch.float32 and weights.device == encoder.device
    assert torch.allclose(weights.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(encoder.text_classifier(PROMPTS, batch_size=1), weights, atol=1e-5)


def test_a_class_with_two_prompts_gets_the_renormalised_mean(encoder):
    weights = encoder.text_classifier(PROMPTS)
    prompts = prompt_features(encoder, PROMPTS["cat"] + PROMPTS["dog"])
    assert torch.allclose(weights[0], F.normalize(prompts[0] + prompts[1], dim=-1), atol=1e-5)
    assert torch.allclose(weights[1], prompts[2], atol=1e-5)
    # The same as the mean of the two single-prompt classifiers, renormalised.
    first, second = (encoder.text_classifier({"cat": [text]})[0] for text in PROMPTS["cat"])
    assert torch.allclose(weights[0], F.normalize(first + second, dim=-1), atol=1e-5)


def test_open_clip_without_a_tokenizer_has_no_text_tower(encoder):
    image_only = OpenClipImageEncoder(encoder.name, encoder.model, encoder.transform)
    assert not image_only.has_text_tower
    with pytest.raises(ConfigError, match=r"classifier\.methods=\[prototypes\]"):
        image_only.text_classifier(PROMPTS)
