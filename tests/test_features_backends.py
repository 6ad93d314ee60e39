"""Image encoders chosen by model name: transformers CLIP always, open_clip only where it imports."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from synthshot.errors import ConfigError, ModelError
from synthshot.features.backends import (
    OpenClipImageEncoder,
    load_image_encoder,
    parse_open_clip_name,
    resolve_backend,
    weights_digest,
)
from synthshot.models.hub import HubOptions

HAS_OPEN_CLIP = (
    importlib.util.find_spec("open_clip") is not None and importlib.util.find_spec("torchvision") is not None
)
NO_OPEN_CLIP = "open_clip is not installed here (it needs torchvision, which has no CPU build in this environment)"


@pytest.mark.parametrize(
    ("name", "backend"),
    [
        ("openai/clip-vit-base-patch16", "transformers"),
        ("ViT-L/14", "transformers"),
        ("/models/my-clip", "transformers"),
        ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "transformers"),
        ("open_clip:RN50/openai", "open_clip"),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip"),
    ],
)
def test_auto_backend_is_chosen_by_name(name, backend):
    assert resolve_backend(name, "auto") == backend


def test_explicit_backends_and_their_errors():
    assert resolve_backend("RN50/openai", "open_clip") == "open_clip"
    with pytest.raises(ConfigError, match="open_clip name"):
        resolve_backend("open_clip:RN50/openai", "transformers")
    with pytest.raises(ConfigError, match="features.backend"):
        resolve_backend("ViT-B/16", "timm")


def test_open_clip_names():
    assert parse_open_clip_name("open_clip:RN50/openai") == ("RN50", "openai")
    assert parse_open_clip_name("open_clip:ViT-B-32") == ("ViT-B-32", None)
    assert parse_open_clip_name("open_clip:ViT-B-16//ckpt/weights.pt") == ("ViT-B-16", "/ckpt/weights.pt")
    assert parse_open_clip_name("hf-hub:laion/CLIP-ViT-B-32") == ("hf-hub:laion/CLIP-ViT-B-32", None)
    with pytest.raises(ConfigError, match="architecture"):
        parse_open_clip_name("open_clip:/openai")


def test_transformers_encoder_exposes_its_input_and_a_stable_fingerprint(tiny_kit, hub_options):
    encoder = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    assert encoder.backend == "transformers" and encoder.input_size == (32, 32)
    assert encoder.mean == tuple(encoder.processor.image_mean) and encoder.std == tuple(encoder.processor.image_std)
    image = Image.new("RGB", (50, 40), (10, 200, 30))
    pixels = encoder.preprocess([image, image])
    assert pixels.shape == (2, 3, 32, 32)
    assert encoder.encode(pixels).shape == (2, encoder.dim)
    again = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    assert again.fingerprint == encoder.fingerprint
    assert encoder.fingerprint["model"] == str((tiny_kit / "clip").resolve())


def test_weights_digest_sees_a_change_anywhere_in_a_tensor():
    weight = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    digest = weights_digest([("w", weight)])
    assert weights_digest([("w", weight.clone())]) == digest
    assert weights_digest([("w", weight + 1e-3 * torch.randn_like(weight))]) != digest
    assert weights_digest([("v", weight)]) != digest


def test_a_missing_adapter_folder_is_a_model_error(tiny_kit, hub_options, tmp_path):
    with pytest.raises(ModelError, match="adapter"):
        load_image_encoder(str(tiny_kit / "clip"), hub_options, adapter=tmp_path / "no-adapter")
    with pytest.raises(ConfigError, match="transformers CLIP models only"):
        load_image_encoder("open_clip:RN50/openai", hub_options, adapter=tmp_path)


@pytest.mark.skipif(HAS_OPEN_CLIP, reason="open_clip imports here")
def test_open_clip_names_without_open_clip_say_how_to_get_it():
    with pytest.raises(ModelError, match=r"synthshot\[openclip\].*torchvision"):
        load_image_encoder("open_clip:RN50/openai", HubOptions(offline=True))


@pytest.mark.skipif(not HAS_OPEN_CLIP, reason=NO_OPEN_CLIP)
def test_open_clip_encoder_runs_its_own_transform_and_crops():
    from synthshot.features.extract import encode_pil_images

    encoder = load_image_encoder("open_clip:RN50", HubOptions(offline=True))  # no tag: random weights, offline
    assert encoder.backend == "open_clip" and encoder.input_size == (224, 224)
    image = Image.new("RGB", (300, 200), (10, 200, 30))
    single = encode_pil_images(encoder, [image])
    multi = encode_pil_images(encoder, [image], multiscale=True, scales=[5, 10])
    assert single.shape == multi.shape == (1, encoder.dim)
    assert torch.allclose(multi.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert encoder.fingerprint["preprocessing"]["transform"]


def test_a_lora_adapter_changes_the_features_and_is_recorded(tiny_kit, hub_options, tmp_path, monkeypatch):
    from lora_fixtures import trained_adapter
    from synthshot.classify.lora import LoraSettings
    from synthshot.features.extract import encode_pil_images, extract_features
    from synthshot.models.clip import load_clip

    bundle = load_clip(str(tiny_kit / "clip"), hub_options)
    trained_adapter(bundle, tmp_path / "adapter", LoraSettings(towers=("vision",)), {"a": ["x"]})

    plain = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    adapted = load_image_encoder(str(tiny_kit / "clip"), hub_options, adapter=tmp_path / "adapter")
    assert adapted.fingerprint["model"] == plain.fingerprint["model"]
    assert adapted.fingerprint["adapter"]["path"] == str((tmp_path / "adapter").resolve())
    assert adapted.fingerprint["weights_sha256"] != plain.fingerprint["weights_sha256"]
    image = Image.new("RGB", (40, 36), (120, 30, 200))
    assert not torch.allclose(encode_pil_images(adapted, [image]), encode_pil_images(plain, [image]), atol=1e-3)

    # A cache made without the adapter is not reused with it.
    path = tmp_path / "image.png"
    image.save(path)
    cache = tmp_path / "features.safetensors"
    extract_features(plain, [path], multiscale=False, cache=cache, progress=False)
    calls = []
    encode = adapted.encode
    monkeypatch.setattr(adapted, "encode", lambda pixels: calls.append(len(pixels)) or encode(pixels))
    extract_features(adapted, [path], multiscale=False, cache=cache, progress=False)
    assert calls == [1]


PROMPTS = {"cat": ["a photo of a cat.", "a cat."], "dog": ["a photo of a dog."]}


def test_transformers_text_classifier_is_the_text_classifier_weights(tiny_kit, hub_options):
    from synthshot.classify.text import text_classifier_weights
    from synthshot.models.clip import load_clip

    encoder = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    assert encoder.has_text_tower
    weights = encoder.text_classifier(PROMPTS)
    assert weights.shape == (2, encoder.dim) and weights.dtype == torch.float32 and weights.device == encoder.device
    assert torch.allclose(weights.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.equal(weights, text_classifier_weights(load_clip(str(tiny_kit / "clip"), hub_options), PROMPTS, "cpu"))
    assert torch.allclose(encoder.text_classifier(PROMPTS, batch_size=1), weights, atol=1e-6)


def test_transformers_text_classifier_uses_the_adapted_text_tower(tiny_kit, hub_options, tmp_path):
    from lora_fixtures import trained_adapter
    from synthshot.classify.lora import LoraSettings
    from synthshot.classify.text import text_classifier_weights
    from synthshot.models.clip import load_clip

    trained_adapter(load_clip(str(tiny_kit / "clip"), hub_options), tmp_path / "adapter",
                    LoraSettings(towers=("text",)), PROMPTS)
    plain = load_image_encoder(str(tiny_kit / "clip"), hub_options)
    adapted = load_image_encoder(str(tiny_kit / "clip"), hub_options, adapter=tmp_path / "adapter")
    weights = adapted.text_classifier(PROMPTS)
    assert not torch.allclose(weights, plain.text_classifier(PROMPTS), atol=1e-3)
    assert torch.equal(weights, text_classifier_weights(adapted.clip, PROMPTS, "cpu"))


class FakeVisual(torch.nn.Module):
    image_size = 8
    output_dim = 6

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 6)


class FakeOpenClip(torch.nn.Module):
    """What OpenClipImageEncoder reads of an open_clip model: `visual`, `encode_image`, `encode_text`
    (token ids [P, L] -> [P, D]; dropout, so eval mode matters)."""

    def __init__(self, text: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.visual = FakeVisual()
        self.token_embedding = torch.nn.Embedding(128, 6)
        self.dropout = torch.nn.Dropout(0.5)
        self.text_projection = torch.nn.Linear(6, 6)
        if not text:
            self.encode_text = None
        self.token_batches: list[int] = []

    def encode_image(self, pixels):
        return self.visual.proj(pixels.mean(dim=(2, 3)))

    def encode_text(self, tokens):
        assert tokens.dtype == torch.long and tokens.device == self.text_projection.weight.device
        self.token_batches.append(len(tokens))
        return self.text_projection(self.dropout(self.token_embedding(tokens).mean(dim=1)))


def fake_tokenizer(texts):
    """open_clip's tokenizer contract: prompts -> token ids [P, L] (here: character codes, padded)."""
    tokens = torch.zeros(len(texts), 16, dtype=torch.long)
    for i, text in enumerate(texts):
        codes = [ord(c) % 128 for c in text[:16]]
        tokens[i, : len(codes)] = torch.tensor(codes)
    return tokens


def test_open_clip_text_classifier_averages_normalised_prompt_features():
    model = FakeOpenClip().to(torch.float64)
    model.train()
    encoder = OpenClipImageEncoder("open_clip:fake", model, transform=None, tokenizer=fake_tokenizer)
    assert encoder.has_text_tower and encoder.dim == 6
    weights = encoder.text_classifier(PROMPTS, batch_size=2)
    assert model.token_batches == [2, 1]  # prompts in batches of at most batch_size
    assert model.training  # left as it was; eval mode (no dropout) only while encoding
    assert weights.shape == (2, 6) and weights.dtype == torch.float32 and not weights.requires_grad
    assert torch.allclose(weights.norm(dim=-1), torch.ones(2), atol=1e-6)

    model.eval()
    with torch.no_grad():
        tokens = fake_tokenizer(PROMPTS["cat"] + PROMPTS["dog"])
        prompt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    expected = torch.nn.functional.normalize(torch.stack([prompt[0] + prompt[1], prompt[2]]), dim=-1).float()
    assert torch.allclose(weights, expected, atol=1e-6)
    assert torch.allclose(encoder.text_classifier(PROMPTS, batch_size=1), weights, atol=1e-6)
    # One prompt per class: that prompt's normalised feature.
    single = encoder.text_classifier({"a": [PROMPTS["cat"][1]], "b": PROMPTS["dog"]})
    assert torch.allclose(single, prompt[1:].float(), atol=1e-6)


def test_encoders_without_a_text_tower_say_to_use_prototypes():
    from synthshot.errors import DataError

    no_tokenizer = OpenClipImageEncoder("open_clip:fake", FakeOpenClip(), transform=None)
    image_only = OpenClipImageEncoder("open_clip:image-only", FakeOpenClip(text=False), None, fake_tokenizer)
    for encoder in (no_tokenizer, image_only):
        assert not encoder.has_text_tower
        with pytest.raises(ConfigError, match=rf"{encoder.name}.*classifier\.methods=\[prototypes\]"):
            encoder.text_classifier(PROMPTS)
    with pytest.raises(DataError, match="at least one prompt"):
        OpenClipImageEncoder("open_clip:fake", FakeOpenClip(), None, fake_tokenizer).text_classifier({"a": []})
