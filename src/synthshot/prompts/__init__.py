"""Class prompts for text-to-image prototypes (LGCLIP): registry templates or an LLM (an
OpenAI-compatible endpoint or a local transformers model), cleaned, validated, cached, and
written to `prompts.json`."""

from synthshot.prompts.class_prompts import PROMPTS_FILE, load_prompts, write_class_prompts

__all__ = ["PROMPTS_FILE", "load_prompts", "write_class_prompts"]
