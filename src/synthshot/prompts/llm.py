"""Asking an LLM backend for N prompts of one class, within a retry budget.

Every request asks for the prompts still missing (at most `per_request`) in the same words: it
lists none of those already kept, because small models copy listed lines back (rejected as
duplicates, the class would never advance). Each request has its own sampling seed, sent to the
backend, and after the first the temperature rises a little, so a re-ask gets another answer;
the seeds are numbered per class across reruns (the cache records the requests made), so a rerun
never repeats one. Whatever is valid in an answer is kept. A failed request (`BackendUnavailable`)
is retried after an exponential back-off; an answer with too few valid prompts is followed by
another request at once. At most 1 + `max_retries` requests per class and run; a class that ends
with fewer than N but at least `min_count` prompts goes on with a warning."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from synthshot.errors import ModelError
from synthshot.prompts.backends import BackendTimeout, BackendUnavailable, ChatBackend
from synthshot.prompts.instruction import build_messages, class_form
from synthshot.prompts.parse import CUT_OFF, Selection, parse_response

logger = logging.getLogger("synthshot.prompts")

MAX_BACKOFF_S = 60.0
# Each request after a class's first adds this to the temperature, up to HOTTEST (or the
# configured temperature when it is higher).
HEAT_STEP = 0.1
HOTTEST = 1.0


def backoff_delay(failures: int, base: float) -> float:
    """Seconds to wait after the `failures`-th failed request in a row (1, 2, ...): base * 2^(k-1)."""
    return min(base * 2 ** (failures - 1), MAX_BACKOFF_S)


def request_seed(name: str, attempt: int) -> int:
    """A sampling seed per (class, request), so answers are reproducible where the backend honours it."""
    return int.from_bytes(hashlib.sha256(f"{name}\0{attempt}".encode()).digest()[:4], "little")


def request_temperature(base: float, attempt: int) -> float:
    """The temperature of a class's `attempt`-th request (0, 1, ...): `base` first, then HEAT_STEP
    more per request, up to HOTTEST (or `base` when it is higher)."""
    if attempt <= 0:
        return base
    return round(min(base + HEAT_STEP * attempt, max(base, HOTTEST)), 4)


def ask_for_prompts(
    backend: ChatBackend,
    name: str,
    n: int,
    instruction: str,
    *,
    max_retries: int,
    have: list[str] = (),
    on_answer: Callable[[list[str], list[int]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    backoff: float = 1.0,
    min_count: int | None = None,
    per_request: int | None = None,
    temperature: float | None = None,
    first_attempt: int = 0,
    seeds: list[int] = (),
    limits: dict | None = None,
    **checks,
) -> list[str]:
    """`n` valid, distinct prompts for class `name`, starting from `have`, or at least `min_count`
    (default `n`) with a warning once the budget is spent. `checks` go to `check_prompt` (bounds,
    aliases, token limit) and `select_prompts` (`near_duplicate`). Requests are numbered from
    `first_attempt` (the requests of earlier runs, whose `seeds` are given), for their seed and
    temperature; `on_answer` sees the kept prompts and every seed sent so far after each answer
    (to cache them). `limits` holds the values the error quotes (max_new_tokens, timeout).
    ModelError, saying what to change, when fewer than `min_count` are found."""
    min_count = n if min_count is None else max(1, min(min_count, n))
    limits = limits or {}
    form = class_form(instruction)
    selection = Selection(prompts=list(have))
    sent = list(seeds)
    failures = 0  # failed requests in a row, for the back-off
    failed = requests = timeouts = 0
    last_failure = last_answer = None
    for attempt in range(first_attempt, first_attempt + max_retries + 1):
        missing = n - len(selection.prompts)
        if missing <= 0:
            break
        messages = build_messages(instruction, name, min(missing, per_request or missing))
        requests += 1
        seed = request_seed(name, attempt)
        sent.append(seed)
        sampling = {} if temperature is None else {"temperature": request_temperature(temperature, attempt)}
        try:
            completion = backend.complete(messages, seed=seed, **sampling)
        except BackendUnavailable as exc:
            failures += 1
            failed += 1
            timeouts += isinstance(exc, BackendTimeout)
            last_failure = str(exc)
            if attempt < first_attempt + max_retries:
                sleep(backoff_delay(failures, backoff))
            continue
        failures = 0
        last_answer = completion.text
        answer = parse_response(
            completion.text,
            name,
            keep=selection.prompts,
            limit=n,
            truncated=completion.truncated,
            class_first=form or False,
            **checks,
        )
        selection.prompts = answer.prompts
        selection.rejected.update(answer.rejected)
        if on_answer is not None:
            on_answer(selection.prompts, sent)
    if len(selection.prompts) >= n:
        return selection.prompts[:n]

    slow = _slow_hint(limits) if timeouts else ""
    failures_note = f"; {failed} requests failed, last: {last_failure}" if failed else ""
    count = f"{len(selection.prompts)} of {n}"
    tail = f"after {requests} requests to {backend.describe} (rejected: {selection.summary()}{failures_note}"
    if len(selection.prompts) >= min_count:
        logger.warning(
            "class %r: %s prompts %s): going on with %d, as prompts.min_per_class (%d) allows",
            name, count, tail, len(selection.prompts), min_count,
        )
        return selection.prompts
    if failed == requests:
        hint = slow or (
            "check that it runs and is reachable at prompts.base_url, or raise prompts.timeout / prompts.max_retries"
        )
        raise ModelError(
            f"{backend.describe} failed all {requests} requests for class {name!r} (last: {last_failure}): {hint}"
        )
    answer_note = " ".join((last_answer or "").split())[:120]
    raise ModelError(
        f"class {name!r}: only {count} valid prompts {tail}; last answer began {answer_note!r}): "
        + _hints(selection, limits, min_count, n, slow)
    )


def _slow_hint(limits: dict) -> str:
    timeout = limits.get("timeout")
    now = f" (now {timeout:g} s)" if timeout is not None else ""
    return (
        f"raise prompts.timeout{now} or lower prompts.per_request, so that one answer fits in it (a local server "
        "goes on with a request that timed out, and the retry waits behind it)"
    )


def _hints(selection: Selection, limits: dict, min_count: int, n: int, slow: str) -> str:
    """What to change, from what went wrong: the most telling first."""
    rejected = selection.rejected
    hints = []
    if rejected[CUT_OFF]:
        tokens = limits.get("max_new_tokens")
        now = f" (now {tokens})" if tokens is not None else ""
        hints.append(f"raise prompts.max_new_tokens{now} or lower prompts.per_request, as answers were cut off")
    if any(reason.startswith("not of the form") or reason == "does not mention the class" for reason in rejected):
        hints.append("use a model that follows the instruction")
    if any(reason.endswith(" tokens") for reason in rejected):
        hints.append("ask for shorter prompts in prompts.instruction or raise or unset prompts.max_tokens")
    if any(reason.endswith(" characters") for reason in rejected):
        hints.append("adjust prompts.min_chars / prompts.max_chars")
    if slow:
        hints.append(slow)
    hints.append("raise prompts.max_retries (a rerun asks again, with new seeds)")
    if min_count < n:
        hints.append(f"lower prompts.min_per_class ({min_count})")
    else:
        hints.append("set prompts.min_per_class to go on with fewer")
    return "; ".join(hints)
