"""A trained-looking LoRA adapter for tests (a fresh adapter is the identity: its B matrices are 0)."""

from __future__ import annotations

import torch

from synthshot.classify.lora import LoraSettings, adapter_info, add_lora, model_probe, save_adapter


def trained_adapter(bundle, folder, settings=None, prompts=None):
    """Add LoRA to `bundle.model`, give its B matrices random values and save it in `folder`."""
    settings = settings or LoraSettings()
    prompts = prompts or {"a": ["x"], "b": ["y"]}
    probe = model_probe(bundle.model)
    peft_model = add_lora(bundle.model, settings)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    save_adapter(peft_model, folder, adapter_info(bundle.name, probe, settings, list(prompts), prompts))
    return peft_model
