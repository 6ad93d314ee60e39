"""Loading CLIP (transformers `CLIPModel`: image and text towers with projections, tokenizer and
image processor) from a hub id or a local folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synthshot.models.hub import HubOptions, is_local, loading

# Short names users type, mapped to the hub ids of the OpenAI weights.
CLIP_ALIASES = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336px": "openai/clip-vit-large-patch14-336",
}


@dataclass
class CLIPBundle:
    """A CLIP model with what it needs to read text and images."""

    name: str
    model: Any  # transformers.CLIPModel
    tokenizer: Any  # transformers.CLIPTokenizer
    processor: Any  # transformers.CLIPImageProcessor


def load_clip(name: str, options: HubOptions, *, device: str = "cpu", dtype=None) -> CLIPBundle:
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model_id = CLIP_ALIASES.get(name, name)
    kwargs = options.kwargs(local=is_local(model_id))
    with loading("CLIP model", model_id, options):
        model = CLIPModel.from_pretrained(model_id, dtype=dtype, use_safetensors=True, **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, **kwargs)
        processor = CLIPImageProcessor.from_pretrained(model_id, **kwargs)
    model.eval().to(device)
    return CLIPBundle(name=model_id, model=model, tokenizer=tokenizer, processor=processor)
