"""Loading Stable Diffusion pipelines and IP-Adapters (hub id or local folder) through diffusers'
own `from_pretrained` / `load_ip_adapter`, with the combination checked before any weight loads.

Two IP-Adapter file formats are understood, the ones h94/IP-Adapter publishes for SD 1.5:
`ip-adapter_sd15` (a linear projection of the pooled CLIP image embedding) and
`ip-adapter-plus_sd15` (a resampler over the encoder's penultimate hidden states). Several can be
loaded at once (DIPSY loads the plus adapter twice: positive and negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthshot.errors import ModelError
from synthshot.models.hub import HubOptions, is_local, loading, resolve_file


@dataclass(frozen=True)
class AdapterSpec:
    """What an IP-Adapter weight file needs, read from its header without loading it."""

    file: Path
    kind: str  # "basic" (ip-adapter) or "plus" (ip-adapter-plus)
    input_dim: int  # image encoder width it expects: projection_dim (basic) or hidden_size (plus)
    output_dim: int  # U-Net cross-attention width it produces
    num_layers: int  # cross-attention layers it adapts
    num_tokens: int

    @property
    def uses_hidden_states(self) -> bool:
        return self.kind == "plus"


def read_adapter_spec(path: Path) -> AdapterSpec:
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise ModelError(f"IP-Adapter file {path} is not a .safetensors file: only safetensors weights are loaded")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ModelError(f"IP-Adapter file {path} cannot be read as safetensors: {exc}") from exc
    layers = {key.split(".")[1] for key in shapes if key.startswith("ip_adapter.") and key.endswith("to_k_ip.weight")}
    if "image_proj.proj.weight" in shapes:
        out_tokens, input_dim = shapes["image_proj.proj.weight"]
        output_dim = shapes["image_proj.norm.weight"][0]
        return AdapterSpec(path, "basic", input_dim, output_dim, len(layers), out_tokens // output_dim)
    if "image_proj.latents" in shapes and "image_proj.proj_in.weight" in shapes:
        return AdapterSpec(
            path,
            "plus",
            input_dim=shapes["image_proj.proj_in.weight"][1],
            output_dim=shapes["image_proj.proj_out.weight"][0],
            num_layers=len(layers),
            num_tokens=shapes["image_proj.latents"][1],
        )
    raise ModelError(
        f"IP-Adapter file {path} is neither the ip-adapter_sd15 nor the ip-adapter-plus_sd15 format "
        "(no image_proj.proj or image_proj.latents tensors)"
    )


def check_adapter_fits(spec: AdapterSpec, encoder_config, unet_config, cross_attention_layers: int) -> None:
    """Fail with a message saying what does not fit, before anything is loaded."""
    width_name = "hidden_size" if spec.uses_hidden_states else "projection_dim"
    encoder_width = getattr(encoder_config, width_name)
    if spec.input_dim != encoder_width:
        raise ModelError(
            f"IP-Adapter {spec.file.name} ({spec.kind}) expects image features of width {spec.input_dim}, but "
            f"the image encoder's {width_name} is {encoder_width}: use the image encoder the adapter was "
            "trained with (ViT-H/14 for the SD 1.5 adapters)"
        )
    cross = unet_config.cross_attention_dim
    if spec.output_dim != cross:
        family = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
        raise ModelError(
            f"IP-Adapter {spec.file.name} produces {spec.output_dim}-wide tokens ({family.get(spec.output_dim, 'another model')}) "
            f"but the U-Net's cross-attention width is {cross} ({family.get(cross, 'unknown family')}): "
            "use an adapter made for this Stable Diffusion version"
        )
    if spec.num_layers != cross_attention_layers:
        raise ModelError(
            f"IP-Adapter {spec.file.name} adapts {spec.num_layers} cross-attention layers but the U-Net has "
            f"{cross_attention_layers}: the adapter was made for another U-Net"
        )


def load_sd_pipeline(model: str, options: HubOptions, *, dtype=None):
    """A `StableDiffusionPipeline` from a hub id or folder; safety checker off, safetensors only."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # the per-component loading bar says nothing useful
    with loading("Stable Diffusion pipeline", model, options):
        return StableDiffusionPipeline.from_pretrained(
            model,
            safety_checker=None,
            requires_safety_checker=False,
            use_safetensors=True,
            dtype=dtype,
            **options.kwargs(local=is_local(model)),
        )


def load_image_encoder(
    ip_adapter: str, subfolder: str, image_encoder: str | None, options: HubOptions, *, dtype=None
):
    """The CLIP vision tower (with projection) that turns IP-Adapter input images into features."""
    from transformers import CLIPVisionModelWithProjection

    name = image_encoder or ip_adapter
    kwargs = options.kwargs(local=is_local(name))
    if image_encoder is None:
        kwargs["subfolder"] = subfolder
    label = name if image_encoder else f"{ip_adapter}/{subfolder}"
    with loading("IP-Adapter image encoder", label, options, path_check=image_encoder is not None):
        return CLIPVisionModelWithProjection.from_pretrained(name, dtype=dtype, use_safetensors=True, **kwargs)


def cross_attention_layer_count(unet) -> int:
    return sum(name.endswith("attn2.processor") for name in unet.attn_processors)


def load_ip_adapters(
    pipe,
    ip_adapter: str,
    subfolder: str,
    weight_names: list[str],
    options: HubOptions,
    *,
    image_encoder: str | None = None,
    image_encoder_subfolder: str = "models/image_encoder",
) -> list[AdapterSpec]:
    """Load one or more IP-Adapters (and their image encoder) into `pipe`, in order.

    The image encoder is loaded first and registered on the pipeline, so diffusers'
    `load_ip_adapter` does not look for it elsewhere; every adapter is checked against the encoder
    and the U-Net before diffusers touches its weights.
    """
    if not weight_names:
        raise ModelError("no IP-Adapter weights given: set models.ip_adapter_weights")
    specs = [read_adapter_spec(resolve_file(ip_adapter, name, subfolder, options)) for name in weight_names]
    encoder = load_image_encoder(ip_adapter, image_encoder_subfolder, image_encoder, options, dtype=pipe.unet.dtype)
    layers = cross_attention_layer_count(pipe.unet)
    for spec in specs:
        check_adapter_fits(spec, encoder.config, pipe.unet.config, layers)

    pipe.register_modules(image_encoder=encoder.to(pipe.unet.device))
    with loading("IP-Adapter", ip_adapter, options):
        pipe.load_ip_adapter(
            ip_adapter,
            subfolder=subfolder,
            weight_name=list(weight_names),
            image_encoder_folder=None,
            **options.kwargs(local=is_local(ip_adapter)),
        )
    return specs
