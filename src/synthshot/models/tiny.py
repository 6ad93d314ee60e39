"""The tiny model kit: complete models with the real architectures and random weights, written
offline in the folder layouts the hub uses, so the whole pipeline runs and is tested through the
same `from_pretrained` code as real weights.

Layout of a kit folder (each part mirrors a hub repository):

    stable-diffusion/   like stable-diffusion-v1-5/stable-diffusion-v1-5 (diffusers pipeline folder)
    ip-adapter/         like h94/IP-Adapter: models/ip-adapter_sd15.safetensors,
                        models/ip-adapter-plus_sd15.safetensors, models/image_encoder/
    clip/               like openai/clip-vit-base-patch16 (model, tokenizer, image processor)
    kit.json            seed, versions and the sha256 of every file

Sizes follow diffusers' own test components: big enough to keep every code path (several
cross-attention layers, a resampler with real depth), small enough that a denoising step takes
milliseconds on a CPU. The same seed writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from synthshot.errors import ModelError
from synthshot.io import TEMP_PREFIX, atomic_write_json, quote, swap_in_folder

SD_FOLDER = "stable-diffusion"
IP_ADAPTER_FOLDER = "ip-adapter"
IP_ADAPTER_SUBFOLDER = "models"
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
CLIP_FOLDER = "clip"
BASIC_WEIGHTS = "ip-adapter_sd15.safetensors"
PLUS_WEIGHTS = "ip-adapter-plus_sd15.safetensors"
KIT_MANIFEST = "kit.json"

# Latents of 16x16 and a VAE that halves the size: the kit draws 32x32 images.
IMAGE_SIZE = 32
CROSS_ATTENTION_DIM = 32
ENCODER_HIDDEN = 32
ENCODER_PROJECTION = 32
# Stable Diffusion 1.5's own scheduler configuration.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-to-printable-character table of byte-level BPE (GPT-2, CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def make_tokenizer():
    """A CLIP tokenizer over the 256 byte symbols (no merges): every word is spelled out symbol by
    symbol, so it tokenizes any text offline with the real CLIP tokenizer code."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=[], model_max_length=77)


def _text_config(vocab_size: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        projection_dim=32,
    )


def _vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=ENCODER_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=4,
        projection_dim=ENCODER_PROJECTION,
    )


def _image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def write_stable_diffusion(folder: Path, seed: int) -> None:
    """An SD-1.5-architecture pipeline folder: UNet, VAE, CLIP text encoder, tokenizer, scheduler."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )
    tokenizer = make_tokenizer()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer)))
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _cross_attention_layers(unet_config: dict) -> list[int]:
    """Hidden size of each cross-attention layer of a U-Net, in `attn_processors` order."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(unet_config)
    sizes = []
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            module = unet.get_submodule(name.removesuffix(".processor"))
            sizes.append(module.to_q.out_features)
    return sizes


def write_ip_adapters(folder: Path, unet_config: dict, seed: int) -> None:
    """IP-Adapter weights in the original h94 file formats (`image_proj.*` + `ip_adapter.<k>.*`,
    k = 1, 3, 5, ... over the U-Net's attention processors) and the image encoder folder."""
    import torch
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    models = folder / IP_ADAPTER_SUBFOLDER
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed + 3)
    CLIPVisionModelWithProjection(_vision_config()).save_pretrained(folder / IMAGE_ENCODER_SUBFOLDER)

    layers = _cross_attention_layers(unet_config)

    def attention_weights(generator_seed: int) -> dict:
        torch.manual_seed(generator_seed)
        out = {}
        for position, hidden in enumerate(layers):
            key_id = 2 * position + 1
            for name in ("to_k_ip", "to_v_ip"):
                layer = torch.nn.Linear(CROSS_ATTENTION_DIM, hidden, bias=False)
                out[f"ip_adapter.{key_id}.{name}.weight"] = layer.weight.detach().clone()
        return out

    # ip-adapter_sd15: a linear projection of the pooled image embedding into 4 tokens.
    torch.manual_seed(seed + 4)
    basic = ImageProjection(
        image_embed_dim=ENCODER_PROJECTION, cross_attention_dim=CROSS_ATTENTION_DIM, num_image_text_embeds=4
    )
    tensors = {
        "image_proj.proj.weight": basic.image_embeds.weight,
        "image_proj.proj.bias": basic.image_embeds.bias,
        "image_proj.norm.weight": basic.norm.weight,
        "image_proj.norm.bias": basic.norm.bias,
    }
    tensors.update(attention_weights(seed + 5))
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, models / BASIC_WEIGHTS)

    # ip-adapter-plus_sd15: a perceiver resampler over the encoder's penultimate hidden states.
    torch.manual_seed(seed + 6)
    plus = IPAdapterPlusImageProjection(
        embed_dims=ENCODER_HIDDEN, output_dims=CROSS_ATTENTION_DIM, hidden_dims=64, heads=1, num_queries=4
    )
    tensors = {f"image_proj.{k}": v for k, v in plus_to_original(plus.state_dict()).items()}
    tensors.update(attention_weights(seed + 7))
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, models / PLUS_WEIGHTS)


def plus_to_original(state: dict) -> dict:
    """Rename a diffusers `IPAdapterPlusImageProjection` state dict to the original Resampler keys
    (the inverse of diffusers' `_convert_ip_adapter_image_proj_to_diffusers`)."""
    import torch

    renames = {
        "ln0": "0.norm1",
        "ln1": "0.norm2",
        "attn.to_q": "0.to_q",
        "attn.to_out.0": "0.to_out",
        "ff.0": "1.0",
        "ff.1.net.0.proj": "1.1",
        "ff.1.net.2": "1.3",
    }
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        _, index, rest = key.split(".", 2)
        if rest.startswith("attn.to_k"):
            # The original stores keys and values as one `to_kv` matrix.
            out[f"layers.{index}.0.to_kv.weight"] = torch.cat(
                [state[f"layers.{index}.attn.to_k.weight"], state[f"layers.{index}.attn.to_v.weight"]]
            )
            continue
        if rest.startswith("attn.to_v"):
            continue
        for new, old in renames.items():
            if rest.startswith(new + "."):
                out[f"layers.{index}.{old}{rest[len(new):]}"] = value
                break
        else:
            raise KeyError(f"unexpected resampler key {key}")
    return out


def write_clip(folder: Path, seed: int) -> None:
    """A CLIP model (image and text towers with projections), tokenizer and image processor."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = make_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(len(tokenizer)).to_dict(),
        vision_config=_vision_config().to_dict(),
        projection_dim=32,
    )
    torch.manual_seed(seed + 8)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(folder)


def make_tiny_kit(folder: str | Path, seed: int = 0, *, overwrite: bool = False) -> Path:
    """Write a complete tiny model kit into `folder` (built in a staging folder, then renamed, so a
    kill never leaves half a kit). An existing complete kit is kept unless `overwrite`; a folder
    that holds anything else is refused, never emptied."""
    folder = Path(folder)
    is_kit = (folder / KIT_MANIFEST).is_file()
    if is_kit and not overwrite:
        return folder
    if folder.exists() and not is_kit:
        if not folder.is_dir():
            raise ModelError(f"the tiny kit path {quote(folder)} is a file: choose a new folder for the kit")
        entries = sorted(folder.iterdir())
        if entries:
            raise ModelError(
                f"{quote(folder)} is not a tiny model kit (no {KIT_MANIFEST}) and holds other files "
                f"(e.g. {quote(entries[0].name)}): synthshot never writes over them; choose a new or empty folder for the kit"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{folder.name}-", dir=folder.parent))
    try:
        write_stable_diffusion(staging / SD_FOLDER, seed)
        unet_config = json.loads((staging / SD_FOLDER / "unet" / "config.json").read_text())
        write_ip_adapters(staging / IP_ADAPTER_FOLDER, unet_config, seed)
        write_clip(staging / CLIP_FOLDER, seed)
        atomic_write_json(staging / KIT_MANIFEST, kit_manifest(staging, seed))
        swap_in_folder(staging, folder)  # an empty folder, or a kit of ours (it has kit.json), is replaced
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def kit_manifest(folder: Path, seed: int) -> dict:
    import diffusers
    import torch
    import transformers

    files = {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != KIT_MANIFEST
    }
    return {
        "kind": "synthshot tiny model kit (random weights; for tests and the offline quickstart)",
        "seed": seed,
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "models": {
            "diffusion": SD_FOLDER,
            "ip_adapter": IP_ADAPTER_FOLDER,
            "ip_adapter_subfolder": IP_ADAPTER_SUBFOLDER,
            "ip_adapter_weights": [BASIC_WEIGHTS, PLUS_WEIGHTS],
            "image_encoder_subfolder": IMAGE_ENCODER_SUBFOLDER,
            "clip": CLIP_FOLDER,
        },
        "files": files,
    }


def kit_model_settings(folder: str | Path, adapter: str = PLUS_WEIGHTS) -> dict:
    """The `models` config values that point every model at a kit (both adapters = `adapter`)."""
    folder = Path(folder)
    return {
        "diffusion": str(folder / SD_FOLDER),
        "ip_adapter": str(folder / IP_ADAPTER_FOLDER),
        "ip_adapter_subfolder": IP_ADAPTER_SUBFOLDER,
        "ip_adapter_weights": [adapter, adapter],
        "image_encoder": None,
        "image_encoder_subfolder": IMAGE_ENCODER_SUBFOLDER,
        "clip": str(folder / CLIP_FOLDER),
    }
