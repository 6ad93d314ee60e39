"""The `transformers` prompts backend on a tiny real causal LM (Llama architecture, random weights)
with a byte-level tokenizer and a chat template, built offline and loaded from its folder."""

from __future__ import annotations

import pytest

from synthshot.config import PromptsConfig
from synthshot.errors import ModelError
from synthshot.prompts import PROMPTS_FILE, write_class_prompts
from synthshot.prompts.instruction import DEFAULT_INSTRUCTION, build_messages
from synthshot.prompts.local_lm import LocalLMBackend

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Like the templates of models that take no system message (Gemma, Mistral's older ones).
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tiny_lm(folder, *, chat_template: str | None = CHAT_TEMPLATE):
    """Save a tiny Llama and a byte-level BPE tokenizer (no merges: any text, one token per byte)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-llama")


@pytest.fixture(scope="module")
def backend(tiny_lm, hub_options):
    return LocalLMBackend(str(tiny_lm), hub_options, temperature=1.0, max_new_tokens=12)


def test_chat_template_is_applied(backend):
    messages = build_messages(DEFAULT_INSTRUCTION, "tabby cat", 3)
    text = backend.render(messages)
    assert backend.has_chat_template
    assert text.startswith("<s><|system|>\n" + messages[0]["content"] + "</s>\n<|user|>\nWrite 3 different")
    assert text.endswith("</s>\n<|assistant|>\n")


def test_a_template_without_system_role_gets_it_folded_into_the_user_message(backend):
    messages = build_messages(DEFAULT_INSTRUCTION, "tabby cat", 3)
    saved = backend.tokenizer.chat_template
    backend.tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    try:
        text = backend.render(messages)
    finally:
        backend.tokenizer.chat_template = saved
    assert text == f"<|user|>\n{messages[0]['content']}\n\n{messages[1]['content']}\n<|assistant|>\n"


def test_generation_runs_seeded_and_leaves_the_global_rng_alone(backend):
    import torch

    messages = build_messages(DEFAULT_INSTRUCTION, "tabby cat", 3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = backend.complete(messages, seed=7)
    assert torch.rand(1) == before  # sampling used its own seeded generator state
    assert isinstance(first.text, str) and first.text
    assert backend.complete(messages, seed=7) == first
    assert isinstance(first.truncated, bool)


def test_random_output_fails_with_too_few_prompts_after_the_retries(tiny_lm, hub_options, tmp_path):
    settings = PromptsConfig(
        backend="transformers", model=str(tiny_lm), per_class=2, max_retries=1, max_new_tokens=16, temperature=1.0
    )
    with pytest.raises(ModelError) as error:
        write_class_prompts(settings, {"cat": "tabby cat"}, tmp_path, hub_options=hub_options, echo=lambda _: None)
    message = str(error.value)
    assert message.startswith(f"class 'tabby cat': only 0 of 2 valid prompts after 2 requests to prompt LLM {tiny_lm}")
    assert "0 of 1 classes are done" in message and "\n" not in message
    assert not (tmp_path / PROMPTS_FILE).exists()
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # what it had (nothing) is kept for the rerun


def test_a_model_without_chat_template_gets_the_plain_instruction(tmp_path, hub_options):
    folder = make_tiny_lm(tmp_path / "plain-lm", chat_template=None)
    backend = LocalLMBackend(str(folder), hub_options, temperature=0.0, max_new_tokens=4)
    messages = build_messages(DEFAULT_INSTRUCTION, "cat", 2)
    assert not backend.has_chat_template
    assert backend.render(messages) == messages[0]["content"] + "\n\n" + messages[1]["content"] + "\n"
    greedy = backend.complete(messages, seed=1)
    assert backend.complete(messages, seed=2) == greedy  # temperature 0: greedy, seed-free


def test_a_missing_model_folder_is_a_clear_error(tmp_path, hub_options):
    missing = tmp_path / "no-such-lm"
    missing.mkdir()
    with pytest.raises(ModelError, match=rf"prompt LLM folder {missing} cannot be loaded"):
        LocalLMBackend(str(missing), hub_options)
    with pytest.raises(ModelError, match=r"prompt LLM 'someone/no-such-lm' is not available offline"):
        LocalLMBackend("someone/no-such-lm", hub_options)
