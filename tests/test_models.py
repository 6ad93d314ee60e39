"""Model loading and the tiny kit: the real from_pretrained code paths, offline."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from synthshot.errors import ModelError
from synthshot.models.clip import load_clip
from synthshot.models.diffusion import (
    check_adapter_fits,
    cross_attention_layer_count,
    load_ip_adapters,
    load_sd_pipeline,
    read_adapter_spec,
)
from synthshot.models.hub import HubOptions
from synthshot.models.tiny import BASIC_WEIGHTS, KIT_MANIFEST, PLUS_WEIGHTS, make_tiny_kit


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_weights(tiny_kit, tmp_path):
    again = make_tiny_kit(tmp_path / "again", seed=0)
    assert digests(again) == digests(tiny_kit)
    other = make_tiny_kit(tmp_path / "other", seed=1)
    assert digests(other)["stable-diffusion/unet/diffusion_pytorch_model.safetensors"] != \
        digests(tiny_kit)["stable-diffusion/unet/diffusion_pytorch_model.safetensors"]


def test_kit_manifest_lists_every_file(tiny_kit):
    manifest = json.loads((tiny_kit / KIT_MANIFEST).read_text())
    on_disk = {k: v for k, v in digests(tiny_kit).items() if k != KIT_MANIFEST}
    assert manifest["files"] == on_disk


def test_hub_layouts(tiny_kit):
    assert (tiny_kit / "stable-diffusion" / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_kit / "stable-diffusion" / part).is_dir()
    models = tiny_kit / "ip-adapter" / "models"
    assert {p.name for p in models.iterdir()} >= {BASIC_WEIGHTS, PLUS_WEIGHTS, "image_encoder"}


def test_adapter_files_use_the_original_key_formats(tiny_kit):
    basic = load_file(tiny_kit / "ip-adapter" / "models" / BASIC_WEIGHTS)
    plus = load_file(tiny_kit / "ip-adapter" / "models" / PLUS_WEIGHTS)
    assert {"image_proj.proj.weight", "image_proj.norm.weight", "ip_adapter.1.to_k_ip.weight"} <= set(basic)
    assert {"image_proj.latents", "image_proj.layers.0.0.to_kv.weight", "image_proj.layers.3.1.3.weight"} <= set(plus)


def test_everything_loads_through_the_real_loaders(tiny_kit, hub_options):
    sd = load_sd_pipeline(str(tiny_kit / "stable-diffusion"), hub_options)
    specs = load_ip_adapters(sd, str(tiny_kit / "ip-adapter"), "models", [PLUS_WEIGHTS, BASIC_WEIGHTS], hub_options)
    assert [s.kind for s in specs] == ["plus", "basic"]
    assert len(sd.unet.encoder_hid_proj.image_projection_layers) == 2
    # The adapter weights that diffusers loaded are the ones in the file.
    plus = load_file(tiny_kit / "ip-adapter" / "models" / PLUS_WEIGHTS)
    processors = [p for n, p in sd.unet.attn_processors.items() if n.endswith("attn2.processor")]
    torch.testing.assert_close(processors[0].to_k_ip[0].weight, plus["ip_adapter.1.to_k_ip.weight"])
    latents = plus["image_proj.latents"]
    torch.testing.assert_close(sd.unet.encoder_hid_proj.image_projection_layers[0].latents, latents)

    clip = load_clip(str(tiny_kit / "clip"), hub_options)
    tokens = clip.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt")
    assert clip.model.get_text_features(**tokens) is not None
    assert clip.processor.crop_size["height"] == 32


def test_missing_model_offline_says_how_to_provide_it(hub_options):
    with pytest.raises(ModelError, match=r"'someone/missing-model' is not available offline: pass a local folder"):
        load_sd_pipeline("someone/missing-model", hub_options)
    with pytest.raises(ModelError, match="CLIP model 'openai/clip-vit-base-patch16' is not available offline"):
        load_clip("ViT-B/16", hub_options)


def test_broken_local_folder_is_named(tmp_path, hub_options):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelError, match=f"folder {tmp_path} cannot be loaded"):
        load_sd_pipeline(str(tmp_path), hub_options)


def test_only_safetensors_adapters(tmp_path):
    path = tmp_path / "ip-adapter_sd15.bin"
    path.write_bytes(b"pickle")
    with pytest.raises(ModelError, match="only safetensors"):
        read_adapter_spec(path)


def test_unknown_adapter_format(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"something.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelError, match="neither the ip-adapter_sd15 nor the ip-adapter-plus_sd15 format"):
        read_adapter_spec(path)


def test_sd2_adapter_on_sd1_unet_is_refused(tiny_kit, hub_options, tmp_path):
    """An adapter whose tokens are 1024 wide (SD 2.x) cannot feed a 768-wide (SD 1.x) U-Net."""
    sd = load_sd_pipeline(str(tiny_kit / "stable-diffusion"), hub_options)
    tensors = load_file(tiny_kit / "ip-adapter" / "models" / BASIC_WEIGHTS)
    tensors["image_proj.proj.weight"] = torch.zeros(4 * 1024, 32)
    tensors["image_proj.norm.weight"] = torch.zeros(1024)
    path = tmp_path / "wide.safetensors"
    save_file(tensors, path)
    spec = read_adapter_spec(path)
    from transformers import CLIPVisionConfig

    encoder = CLIPVisionConfig.from_pretrained(tiny_kit / "ip-adapter" / "models" / "image_encoder")
    with pytest.raises(ModelError, match=r"1024-wide tokens \(SD 2.x\).*cross-attention width is 32"):
        check_adapter_fits(spec, encoder, sd.unet.config, cross_attention_layer_count(sd.unet))


def test_adapter_for_another_unet_depth_is_refused(tiny_kit, hub_options, tmp_path):
    tensors = load_file(tiny_kit / "ip-adapter" / "models" / BASIC_WEIGHTS)
    del tensors["ip_adapter.7.to_k_ip.weight"], tensors["ip_adapter.7.to_v_ip.weight"]
    folder = tmp_path / "ip" / "models"
    folder.mkdir(parents=True)
    save_file(tensors, folder / "short.safetensors")
    import shutil

    shutil.copytree(tiny_kit / "ip-adapter" / "models" / "image_encoder", folder / "image_encoder")
    sd = load_sd_pipeline(str(tiny_kit / "stable-diffusion"), hub_options)
    with pytest.raises(ModelError, match="adapts 3 cross-attention layers but the U-Net has 4"):
        load_ip_adapters(sd, str(tmp_path / "ip"), "models", ["short.safetensors"], hub_options)


def test_missing_adapter_file(tiny_kit, hub_options):
    sd = load_sd_pipeline(str(tiny_kit / "stable-diffusion"), hub_options)
    with pytest.raises(ModelError, match="does not exist"):
        load_ip_adapters(sd, str(tiny_kit / "ip-adapter"), "models", ["nope.safetensors"], hub_options)


def test_offline_option_sets_local_files_only():
    assert HubOptions(offline=True).kwargs()["local_files_only"] is True
