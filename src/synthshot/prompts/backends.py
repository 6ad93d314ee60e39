"""LLM backends: one chat request in, one answer out. Retries, re-asks and parsing live in
`synthshot.prompts.llm`; a backend only says whether a failure is worth retrying
(`BackendUnavailable`) or needs the user (`ModelError`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from synthshot.errors import ConfigError

if TYPE_CHECKING:
    from synthshot.config import PromptsConfig
    from synthshot.models.hub import HubOptions


@dataclass(frozen=True)
class Completion:
    """One answer: its text, and whether the token limit cut it off (its last line is then partial)."""

    text: str
    truncated: bool = False


class BackendUnavailable(Exception):
    """A failure that another request may not have: timeout, refused connection, HTTP 5xx or 429,
    a body that is not the protocol's JSON."""


class ChatBackend(Protocol):
    describe: str  # "LLM endpoint http://...", for messages

    def complete(self, messages: list[dict[str, str]], *, seed: int) -> Completion: ...


def read_api_key(env_name: str | None) -> str | None:
    """The API key from the environment variable named in the config; None when unset or empty
    (local servers such as vLLM or Ollama need none)."""
    if not env_name:
        return None
    return os.environ.get(env_name) or None


def check_llm_settings(settings: PromptsConfig) -> None:
    """The settings an LLM backend cannot do without, checked before any class is asked for."""
    if settings.backend not in {"openai", "transformers"}:
        raise ConfigError(f"prompts.backend {settings.backend!r} is not an LLM backend: use openai or transformers")
    if not settings.model:
        raise ConfigError(
            f"prompts.model is not set: the {settings.backend} backend needs a model "
            + ("name served by the endpoint" if settings.backend == "openai" else "hub id or local folder")
        )
    if settings.backend == "openai":
        from synthshot.prompts.openai_chat import chat_url

        if not settings.base_url:
            raise ConfigError(
                "prompts.base_url is not set: give the OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 "
                "(vLLM), http://localhost:11434/v1 (Ollama) or https://api.openai.com/v1"
            )
        chat_url(settings.base_url)


def make_backend(settings: PromptsConfig, hub_options: HubOptions | None = None, device: str = "cpu") -> ChatBackend:
    """The LLM backend the prompts settings name (`openai` or `transformers`)."""
    check_llm_settings(settings)
    if settings.backend == "openai":
        from synthshot.prompts.openai_chat import OpenAIChatBackend

        return OpenAIChatBackend(
            settings.base_url,
            settings.model,
            api_key=read_api_key(settings.api_key_env),
            api_key_env=settings.api_key_env,
            temperature=settings.temperature,
            max_tokens=settings.max_new_tokens,
            timeout=settings.timeout,
        )
    from synthshot.models.hub import HubOptions
    from synthshot.prompts.local_lm import LocalLMBackend

    return LocalLMBackend(
        settings.model,
        hub_options or HubOptions(),
        device=device,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
    )
