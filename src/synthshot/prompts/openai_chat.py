"""The `openai` backend: any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp
server, hosted services), over the standard library's HTTP client.

The API key travels only in the request's Authorization header, and only to the endpoint itself: a
redirect is never followed (urllib would send the header to wherever it points) but reported, so the
user can set the final URL. The key is never logged, written or put in a message: server text
quoted in errors and the answers themselves (which become prompts.json and the cache) have every
occurrence of it masked."""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request

from synthshot.errors import ConfigError, ModelError
from synthshot.prompts.backends import BackendTimeout, BackendUnavailable, Completion

# Statuses worth another request: timeouts, conflicts, rate limits and server-side failures.
RETRY_STATUSES = frozenset({408, 409, 425, 429})
SNIPPET = 200
# An error body saying the request does not fit the model's context, whatever the status (llama.cpp:
# "the request exceeds the available context size" (HTTP 400 or 500), "context shift is disabled";
# vLLM and OpenAI: "maximum context length is ..."): another request would fail the same way.
CONTEXT_ERROR = re.compile(r"context[ _-]?(?:size|length|window|shift)|exceed_context|n_ctx", re.IGNORECASE)


def chat_url(base_url: str) -> str:
    """The chat-completions URL of an endpoint given by its base (`.../v1`) or full URL."""
    url = base_url.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"prompts.base_url {base_url!r} is not an http(s) URL: give e.g. http://localhost:8000/v1")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: the 3xx answer then surfaces as an HTTPError (see `_http_error`)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class OpenAIChatBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        temperature: float = 0.8,
        max_tokens: int = 512,
        timeout: float = 60.0,
    ):
        self.url = chat_url(base_url)
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.describe = f"LLM endpoint {self.url}"
        self._api_key = api_key
        self._api_key_env = api_key_env
        # A local server is reached directly, whatever proxy the environment sets for the internet.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(_RefuseRedirects(), *handlers)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIChatBackend(url={self.url!r}, model={self.model!r})"

    def _mask(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _request(
        self, messages: list[dict[str, str]], seed: int, temperature: float | None = None
    ) -> urllib.request.Request:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature if temperature is None else temperature,
            "max_tokens": self.max_tokens,
            # Reproducible answers where the server honours it (llama.cpp, vLLM, Ollama, OpenAI).
            "seed": seed,
            "stream": False,
        }
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")

    def complete(
        self, messages: list[dict[str, str]], *, seed: int = 0, temperature: float | None = None
    ) -> Completion:
        request = self._request(messages, seed, temperature)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise BackendTimeout(f"no answer within {self.timeout:g} s") from None
            raise BackendUnavailable(f"cannot connect ({self._mask(str(exc.reason))})") from None
        except TimeoutError:
            raise BackendTimeout(f"no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise BackendUnavailable(f"connection failed ({exc.__class__.__name__}: {self._mask(str(exc))})") from None
        return self._parse(raw)

    def _http_error(self, exc: urllib.error.HTTPError) -> Exception:
        try:
            body = self._mask(exc.read().decode("utf-8", "replace").strip())
        except OSError:
            body = ""
        detail = body[:SNIPPET]
        status = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if 300 <= exc.code < 400:
            return self._redirect_error(exc)
        if exc.code in {400, 413, 500} and CONTEXT_ERROR.search(body):
            return ModelError(
                f"{self.describe} cannot fit the request in the model's context ({status}): raise the server's "
                "context size (llama.cpp: --ctx-size; vLLM: --max-model-len; Ollama: num_ctx), or lower "
                f"prompts.max_new_tokens (now {self.max_tokens}) or prompts.per_request"
            )
        if exc.code in RETRY_STATUSES or exc.code >= 500:
            return BackendUnavailable(status)
        if exc.code in {401, 403}:
            where = f"the environment variable {self._api_key_env}" if self._api_key_env else "prompts.api_key_env"
            return ModelError(
                f"{self.describe} refused the request ({status}): put a valid API key in {where} "
                "(prompts.api_key_env names the variable)"
            )
        if exc.code == 404:
            return ModelError(
                f"{self.describe} was not found ({status}): check prompts.base_url (it usually ends in /v1) "
                f"and that the server serves model {self.model!r}"
            )
        return ModelError(
            f"{self.describe} rejected the request ({status}): check prompts.model ({self.model!r}), "
            "prompts.max_new_tokens and prompts.temperature"
        )

    def _redirect_error(self, exc: urllib.error.HTTPError) -> Exception:
        location = (exc.headers.get("Location") or "").strip() if exc.headers is not None else ""
        if not location:
            return ModelError(
                f"{self.describe} answered HTTP {exc.code} (a redirect) without saying where to: check prompts.base_url"
            )
        target = self._mask(" ".join(urllib.parse.urljoin(self.url, location).split()))[:SNIPPET]
        return ModelError(
            f"{self.describe} redirected the request (HTTP {exc.code}) to {target}: redirects are not followed "
            "(they could carry the API key elsewhere); if you trust that address, set prompts.base_url to it"
        )

    def _parse(self, raw: bytes) -> Completion:
        snippet = self._mask(raw[:SNIPPET].decode("utf-8", "replace"))
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BackendUnavailable(f"the answer is not JSON (it began {snippet!r})") from None
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BackendUnavailable(f"the answer has no choices[0].message.content (it began {snippet!r})") from None
        if content is not None and not isinstance(content, str):
            raise BackendUnavailable(f"choices[0].message.content is not text (the answer began {snippet!r})")
        # A model may echo what it was sent: the key must not reach the prompts or the cache.
        return Completion(text=self._mask(content or ""), truncated=choice.get("finish_reason") == "length")
