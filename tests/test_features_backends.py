"""Image encoders chosen by model name: transformers CLIP always, open_clip only where it imports."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from synthshot.errors import ConfigError, ModelError
from synthshot.features.backends import (
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
