"""Prompt length in the text-to-image model's own tokens: Stable Diffusion's CLIP text encoder
reads `model_max_length` (77) tokens, its start and end tokens included, and cuts the rest."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synthshot.models.hub import HubOptions


def prompt_tokens(tokenizer, text: str) -> int:
    """The tokens `text` takes in the text encoder's input, start and end tokens included (what
    `model_max_length` counts), without the tokenizer's warning about long sequences."""
    return len(tokenizer.tokenize(text)) + tokenizer.num_special_tokens_to_add()


def diffusion_token_counter(diffusion: str, hub_options: HubOptions | None = None) -> Callable[[str], int]:
    """`prompt_tokens` with the CLIP tokenizer of the diffusion pipeline `diffusion` (hub id or
    folder; its `tokenizer` subfolder): only the tokenizer files are read."""
    from transformers import CLIPTokenizer

    from synthshot.models.hub import HubOptions, is_local, loading

    options = hub_options or HubOptions()
    kwargs = options.kwargs(local=is_local(diffusion))
    with loading("Stable Diffusion tokenizer (for prompts.max_tokens)", diffusion, options):
        tokenizer = CLIPTokenizer.from_pretrained(diffusion, subfolder="tokenizer", **kwargs)
    return lambda text: prompt_tokens(tokenizer, text)
