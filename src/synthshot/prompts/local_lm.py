"""The `transformers` backend: a local causal LM by hub id or folder, prompted through its chat
template when it has one."""

from __future__ import annotations

from synthshot.models.hub import HubOptions, is_local, loading
from synthshot.prompts.backends import Completion


class LocalLMBackend:
    def __init__(
        self,
        model_name: str,
        options: HubOptions,
        *,
        device: str = "cpu",
        temperature: float = 0.8,
        max_new_tokens: int = 512,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = options.kwargs(local=is_local(model_name))
        # Half precision where the device has it; the CPU runs fp32.
        dtype = torch.float32 if device == "cpu" else "auto"
        with loading("prompt LLM", model_name, options):
            self.tokenizer = AutoTokenizer.from_pretrained(model_name, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype, use_safetensors=True, **kwargs)
        self.model.eval().to(device)
        self.device = device
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.describe = f"prompt LLM {model_name}"

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, str]]) -> str:
        """The text the model continues: its chat template over the messages (a system message folded
        into the user's where the template refuses one), or the messages' plain text."""
        if not self.has_chat_template:
            return "\n\n".join(m["content"] for m in messages) + "\n"
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError:
            merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in messages)}]
            return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)

    def complete(
        self, messages: list[dict[str, str]], *, seed: int = 0, temperature: float | None = None
    ) -> Completion:
        """One answer, sampled with `seed` at `temperature` (default: the configured one; 0: greedy)."""
        import torch

        text = self.render(messages)
        # A chat template writes the special tokens (BOS, ...) itself.
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.has_chat_template)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        temperature = self.temperature if temperature is None else temperature
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        devices = [] if self.device == "cpu" else None
        # Seeded per request, without disturbing the caller's random state.
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, pad_token_id=pad, **sampling)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        eos = self.tokenizer.eos_token_id
        stopped = eos is not None and bool((new_tokens == eos).any())
        truncated = len(new_tokens) >= self.max_new_tokens and not stopped
        return Completion(text=self.tokenizer.decode(new_tokens, skip_special_tokens=True), truncated=truncated)
