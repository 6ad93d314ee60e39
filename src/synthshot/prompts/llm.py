"""Asking an LLM backend for N prompts of one class, within a retry budget.

Each request asks for the prompts still missing (listing those already kept); a failed request
(`BackendUnavailable`) is retried after an exponential back-off; an answer with too few valid
prompts is followed by another request at once. At most 1 + `max_retries` requests per class."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from synthshot.errors import ModelError
from synthshot.prompts.backends import BackendUnavailable, ChatBackend
from synthshot.prompts.instruction import asks_class_first, build_messages
from synthshot.prompts.parse import Selection, parse_response

MAX_BACKOFF_S = 60.0


def backoff_delay(failures: int, base: float) -> float:
    """Seconds to wait after the `failures`-th failed request in a row (1, 2, ...): base * 2^(k-1)."""
    return min(base * 2 ** (failures - 1), MAX_BACKOFF_S)


def request_seed(name: str, attempt: int) -> int:
    """A sampling seed per (class, request), so a local model's answers are reproducible."""
    return int.from_bytes(hashlib.sha256(f"{name}\0{attempt}".encode()).digest()[:4], "little")


def ask_for_prompts(
    backend: ChatBackend,
    name: str,
    n: int,
    instruction: str,
    *,
    min_chars: int,
    max_chars: int,
    max_retries: int,
    have: list[str] = (),
    on_answer: Callable[[list[str]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    backoff: float = 1.0,
) -> list[str]:
    """`n` valid, distinct prompts for class `name`, starting from `have`; `on_answer` sees the kept
    prompts after every answer (to cache them). ModelError when the budget runs out first."""
    selection = Selection(prompts=list(have))
    failures = 0  # failed requests in a row, for the back-off
    failed = requests = 0
    last_failure = last_answer = None
    for attempt in range(max_retries + 1):
        if len(selection.prompts) >= n:
            break
        messages = build_messages(instruction, name, n - len(selection.prompts), selection.prompts)
        requests += 1
        try:
            completion = backend.complete(messages, seed=request_seed(name, attempt))
        except BackendUnavailable as exc:
            failures += 1
            failed += 1
            last_failure = str(exc)
            if attempt < max_retries:
                sleep(backoff_delay(failures, backoff))
            continue
        failures = 0
        last_answer = completion.text
        answer = parse_response(
            completion.text,
            name,
            min_chars=min_chars,
            max_chars=max_chars,
            keep=selection.prompts,
            limit=n,
            truncated=completion.truncated,
            class_first=asks_class_first(instruction),
        )
        selection.prompts = answer.prompts
        selection.rejected.update(answer.rejected)
        if on_answer is not None:
            on_answer(selection.prompts)
    if len(selection.prompts) >= n:
        return selection.prompts[:n]

    if failed == requests:
        raise ModelError(
            f"{backend.describe} failed all {requests} requests for class {name!r} (last: {last_failure}): "
            "check that it runs and is reachable at prompts.base_url, or raise prompts.timeout / prompts.max_retries"
        )
    failures_note = f"; {failed} requests failed, last: {last_failure}" if failed else ""
    answer_note = " ".join((last_answer or "").split())[:120]
    raise ModelError(
        f"class {name!r}: only {len(selection.prompts)} of {n} valid prompts after {requests} requests to "
        f"{backend.describe} (rejected: {selection.summary()}{failures_note}; last answer began {answer_note!r}): "
        "raise prompts.max_retries, use a model that follows the instruction, or adjust prompts.min_chars / "
        "prompts.max_chars"
    )
