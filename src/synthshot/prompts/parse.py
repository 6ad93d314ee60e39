"""From an LLM's answer to clean class prompts: pure functions, no I/O.

An answer is split into candidate lines (or read as a JSON list when it is one), each line is
cleaned of list and markdown decoration (numbering, bullets, emphasis, quotes), checked (non-empty,
mentions the class, within the length bounds, not a heading such as "Here are 10 descriptions:")
and de-duplicated against the prompts already kept.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

_FENCE = re.compile(r"^\s*```[\w-]*\s*$")
# Reasoning models may think aloud before answering.
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
# "1.", "1)", "(1)", "[1]", "#1", "1:", "1 -", "Description 1:", "Prompt #2 -" at the start of a line,
# followed by a space: "737-200, which has ..." keeps its number.
_NUMBERING = re.compile(
    r"^(?:(?:description|prompt|caption|item|option)\s*#?\s*\d+\s*[:.)\-–—]?|"
    r"[(\[]?#?\d{1,3}\s*[.):\]\-–—]|#\d{1,3})(?=\s|$)\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^[-*+•●▪◦‣–—](?=\s|$)\s*")
_HEADING = re.compile(r"^(?:#{1,6}|>)(?=\s)\s*")
_EMPHASIS = re.compile(r"(\*\*|__|\*|`)(.+?)\1")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
_SPACE = re.compile(r"\s+")
_KEY = re.compile(r"[\W_]+")


def split_candidates(text: str) -> list[str]:
    """The raw candidate prompts of one answer: the strings of a JSON list when the answer holds
    one (possibly inside a code fence or a `{"descriptions": [...]}` object), else its lines."""
    lines = [line for line in _THINKING.sub("", text).splitlines() if not _FENCE.match(line)]
    body = "\n".join(lines).strip()
    items = _json_strings(body)
    if items is not None:
        return items
    return [line for line in lines if line.strip()]


def _json_strings(body: str) -> list[str] | None:
    start, end = body.find("["), body.rfind("]")
    candidates = [body] + ([body[start : end + 1]] if 0 <= start < end else [])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            value = lists[0] if len(lists) == 1 else None
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return None


def clean_prompt(line: str) -> str:
    """One candidate without its list and markdown decoration, surrounding quotes or stray commas."""
    text = _SPACE.sub(" ", line).strip()
    for _ in range(3):  # decorations nest: "- **1.** "text"",
        before = text
        text = _HEADING.sub("", text)
        text = _BULLET.sub("", text)
        text = _NUMBERING.sub("", text)
        text = _EMPHASIS.sub(r"\2", text)
        text = text.strip().rstrip(",").strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
        # A quoted prompt followed by a period or comma: "cat, which has ...".
        if len(text) >= 3 and text[-1] in ".," and _QUOTES.get(text[0]) == text[-2]:
            text = text[1:-2].strip()
        if text == before:
            break
    return text.replace("**", "").replace("__", "").strip()


def normalise(text: str) -> str:
    """Lower-case letters and digits (of any script) separated by single spaces: the form prompts
    and class names are compared in."""
    return " ".join(_KEY.sub(" ", text.lower()).split())


def check_prompt(
    prompt: str, class_name: str, *, min_chars: int, max_chars: int, class_first: bool = False
) -> str | None:
    """Why `prompt` is not a usable prompt for `class_name` (a short reason), or None if it is.
    With `class_first` (the LGCLIP form "{class}, which has ..."), it must begin with the class
    name and a comma, after at most an article: prose about the class ("A cat is ...") does not."""
    if not prompt:
        return "empty"
    if prompt.endswith(":"):
        return "a heading, not a description"
    if len(prompt) < min_chars:
        return f"shorter than {min_chars} characters"
    if len(prompt) > max_chars:
        return f"longer than {max_chars} characters"
    name, text = normalise(class_name), normalise(prompt)
    if name not in text:
        return "does not mention the class"
    if class_first and not _class_first(class_name).match(prompt):
        return "not of the form '<class>, ...'"
    return None


def _class_first(class_name: str) -> re.Pattern:
    """Matches text that begins with the class name (any case and separators) and a comma."""
    words = r"[\W_]+".join(re.escape(w) for w in normalise(class_name).split())
    return re.compile(rf"(?:(?:a|an|the)\s+)?[\W_]*{words}[\W_]*,", re.IGNORECASE)


@dataclass
class Selection:
    """The prompts kept so far and how many candidates were rejected, by reason."""

    prompts: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in self.rejected.most_common()) or "none"


def select_prompts(
    candidates: list[str],
    class_name: str,
    *,
    min_chars: int,
    max_chars: int,
    keep: list[str] = (),
    limit: int | None = None,
    class_first: bool = False,
) -> Selection:
    """Clean and check `candidates`, and keep the valid ones not already in `keep` (compared after
    `normalise`), in order, until `keep` plus the new ones make `limit`."""
    selection = Selection(prompts=list(keep))
    seen = {normalise(p) for p in keep}
    for raw in candidates:
        if limit is not None and len(selection.prompts) >= limit:
            break
        prompt = clean_prompt(raw)
        reason = check_prompt(prompt, class_name, min_chars=min_chars, max_chars=max_chars, class_first=class_first)
        if reason is None and normalise(prompt) in seen:
            reason = "duplicate"
        if reason is not None:
            selection.rejected[reason] += 1
            continue
        seen.add(normalise(prompt))
        selection.prompts.append(prompt)
    return selection


def parse_response(
    text: str,
    class_name: str,
    *,
    min_chars: int,
    max_chars: int,
    keep: list[str] = (),
    limit: int | None = None,
    truncated: bool = False,
    class_first: bool = False,
) -> Selection:
    """`select_prompts` over the candidates of one answer. When the answer was cut off by the
    token limit, its last candidate is incomplete and dropped."""
    candidates = split_candidates(text)
    if truncated and candidates:
        candidates = candidates[:-1]
    return select_prompts(
        candidates,
        class_name,
        min_chars=min_chars,
        max_chars=max_chars,
        keep=keep,
        limit=limit,
        class_first=class_first,
    )
