"""LLM backends: one chat request in, one answer out. Retries, re-asks and parsing live in
`synthshot.prompts.llm`; a backend only says whether a failure is worth retrying
(`BackendUnavailable`) or needs the user (`ModelError`)."""

from __future__ import annotations

import os
import re
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


class BackendTimeout(BackendUnavailable):
    """No answer within prompts.timeout (the server may still be working on the request)."""


class ChatBackend(Protocol):
    describe: str  # "LLM endpoint http://...", for messages

    def complete(
        self, messages: list[dict[str, str]], *, seed: int, temperature: float | None = None
    ) -> Completion: ...


# The name of an environment variable (POSIX shells accept no other).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NOT_A_NAME = (
    "prompts.api_key_env {why}, not the name of an environment variable: put the key in an environment "
    "variable and give its name here (e.g. api_key_env: OPENAI_API_KEY), or null for an endpoint that needs no key"
)


def _looks_like_token(name: str) -> bool:
    """A name-shaped value that is really a token (`hf_...`, `gsk_...`): long, with digits, and
    with mixed case or of 32 characters or more. Variable names are short and upper case."""
    digits = any(c.isdigit() for c in name)
    mixed = any(c.islower() for c in name) and any(c.isupper() for c in name)
    return digits and ((len(name) >= 16 and mixed) or len(name) >= 32)


def check_api_key_env(value: object) -> str | None:
    """`prompts.api_key_env` checked: the name of an environment variable (surrounding blanks
    dropped), or None for no key (null or empty). Anything else is a ConfigError that never shows
    the value: it is most likely the key itself, pasted where its variable's name belongs."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(NOT_A_NAME.format(why="is not text"))
    name = value.strip()
    if not name:
        return None
    if not ENV_NAME.fullmatch(name) or _looks_like_token(name):
        raise ConfigError(NOT_A_NAME.format(why="looks like a key"))
    return name


def read_api_key(env_name: str | None, base_url: str | None = None) -> str | None:
    """The API key from the environment variable named by `prompts.api_key_env` (surrounding blanks
    dropped), or None when no key is wanted:

    * `api_key_env` null or empty: no key, for any endpoint;
    * the variable is set: its value, for any endpoint;
    * the variable is unset or empty: no key when `base_url` is on this machine (localhost,
      127.0.0.0/8, ::1: llama.cpp, vLLM and Ollama servers need none, and one that wants a key
      answers 401 with a message naming the variable); for any other endpoint a ConfigError naming
      the variable, rather than a request without the key.
    """
    name = check_api_key_env(env_name)
    if name is None:
        return None
    key = (os.environ.get(name) or "").strip()
    if key and not all("!" <= c <= "~" for c in key):  # it goes into an HTTP header
        raise ConfigError(
            f"the environment variable {name} (named by prompts.api_key_env) holds spaces, line breaks or "
            "non-ASCII characters: set it to the API key alone"
        )
    if key:
        return key
    from synthshot.prompts.openai_chat import chat_url, is_loopback

    if base_url is not None and is_loopback(chat_url(base_url)):
        return None
    where = f" for {chat_url(base_url)}" if base_url is not None else ""
    raise ConfigError(
        f"the environment variable {name} (named by prompts.api_key_env) is not set or empty: set it to the API "
        f"key{where}, or set prompts.api_key_env: null if the endpoint needs no key"
    )


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
            api_key=read_api_key(settings.api_key_env, settings.base_url),
            api_key_env=check_api_key_env(settings.api_key_env),
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
