"""From an LLM's answer to clean class prompts: pure functions, no I/O.

An answer is split into candidate lines (or read as a JSON list when it is one), each line is
cleaned of list and markdown decoration (numbering, bullets, emphasis, quotes, brackets), checked
(non-empty, not a heading such as "Here are 10 descriptions:", mentions the class or one of its
aliases, of the instruction's form, within the length bounds and the token limit) and
de-duplicated against the prompts already kept: exact repeats after `normalise`, and
near-duplicates whose normalised texts have a difflib ratio of at least `NEAR_DUPLICATE`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# Two prompts whose normalised texts have a difflib ratio (2 x matching characters / total) of at
# least this are near-duplicates: a changed letter or two ("It's on the shore" / "It's in the
# shore" in an 80-character prompt: 0.99). A changed word scores below it in prompts of up to
# about 120 characters ("seen from the front" / "seen from the side": 0.92 at 60, 0.97 at 140).
NEAR_DUPLICATE = 0.97
CUT_OFF = "cut off at prompts.max_new_tokens"

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
_BRACKETS = {"[": "]", "(": ")", "{": "}", "<": ">"}
# A quote a prompt never ends with unless it began with one (an apostrophe may end a plural).
_END_QUOTES = {'"', "”", "»", "`"}
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
        text = _strip_brackets(text)
        # A quote left open at the start ('cat, which has ...) or closing nothing at the end.
        if text[:1] in _QUOTES and _QUOTES[text[0]] not in text[1:]:
            text = text[1:].strip()
        if text[-1:] in _END_QUOTES and not any(_QUOTES.get(c) == text[-1] for c in text[:-1]):
            text = text[:-1].strip()
        if text == before:
            break
    return text.replace("**", "").replace("__", "").strip()


def _strip_brackets(text: str) -> str:
    """Without a bracket pair around the whole text ("[cat, which has ...]"), a bracket opened at
    the start and never closed ("[cat, which has ...") or one closed at the end and never opened."""
    if not text:
        return text
    first, last = text[0], text[-1]
    if first in _BRACKETS:
        close = _matching_close(text)
        if close == len(text) - 1:
            return text[1:-1].strip()
        if close is None:
            return text[1:].strip()
    opener = {v: k for k, v in _BRACKETS.items()}.get(last)
    if opener is not None and opener not in text[:-1]:
        return text[:-1].strip()
    return text


def _matching_close(text: str) -> int | None:
    """The index of the bracket that closes the one at text[0], or None if it is never closed."""
    opener, closer = text[0], _BRACKETS[text[0]]
    depth = 0
    for i, char in enumerate(text):
        if char == opener:
            depth += 1
        elif char == closer:
            depth -= 1
            if depth == 0:
                return i
    return None


def normalise(text: str) -> str:
    """Lower-case letters and digits (of any script) separated by single spaces: the form prompts
    and class names are compared in."""
    return " ".join(_KEY.sub(" ", text.lower()).split())


def check_prompt(
    prompt: str,
    class_name: str,
    *,
    min_chars: int,
    max_chars: int,
    class_first: bool | str = False,
    aliases: Iterable[str] = (),
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> str | None:
    """Why `prompt` is not a usable prompt for `class_name` (a short reason), or None if it is.

    The class may be named by `class_name` or any of its `aliases` ("Highway" for "Highway or
    Road"). With `class_first` (the LGCLIP form "{class}, which has ..."), the prompt must begin
    with the class name, after at most an article, and then the form's words: True asks for a
    comma, a string (see `instruction.class_form`) for that text, e.g. ", which has". The form is
    checked before the length, so prose is reported as prose. With `max_tokens`, `count_tokens`
    counts the prompt's tokens (those of the text-to-image model's tokenizer)."""
    if not prompt:
        return "empty"
    if prompt.endswith(":"):
        return "a heading, not a description"
    names = _names(class_name, aliases)
    text = normalise(prompt)
    if not any(name in text for name in names):
        return "does not mention the class"
    if class_first:
        form = class_first if isinstance(class_first, str) else ","
        if not _class_first(names, form).match(prompt):
            return f"not of the form '<class>{form} ...'"
    if len(prompt) < min_chars:
        return f"shorter than {min_chars} characters"
    if len(prompt) > max_chars:
        return f"longer than {max_chars} characters"
    if max_tokens is not None and count_tokens is not None and count_tokens(prompt) > max_tokens:
        return f"longer than {max_tokens} tokens"
    return None


def _names(class_name: str, aliases: Iterable[str]) -> list[str]:
    """The class name and its aliases, normalised, without repeats or empties."""
    return [n for n in dict.fromkeys(normalise(n) for n in (class_name, *aliases)) if n]


# A verb of the form agrees with a plural class: "Residential Buildings, which have ...".
_AGREE = {"has": "(?:has|have)", "have": "(?:has|have)", "is": "(?:is|are)", "are": "(?:is|are)"}


def _class_first(names: list[str], form: str = ",") -> re.Pattern:
    """Matches text that begins with one of the (normalised) class names, in any case and
    separators, then the form: a comma and its words (", which has", or "which have")."""
    alternatives = "|".join(r"[\W_]+".join(re.escape(w) for w in name.split()) for name in names)
    words = [_AGREE.get(w, re.escape(w)) for w in normalise(form).split()]
    tail = r"\s*" + r"\s+".join(words) + r"(?![^\W_])" if words else ""
    return re.compile(rf"(?:(?:a|an|the)\s+)?(?:{alternatives})[\W_]*,{tail}", re.IGNORECASE)


def near_duplicate_of(key: str, kept: Iterable[str], threshold: float) -> bool:
    """Whether the normalised text `key` is at least `threshold` similar (difflib ratio) to one of
    the normalised texts `kept`."""
    if threshold >= 1:
        return False
    for other in kept:
        matcher = difflib.SequenceMatcher(None, key, other, autojunk=False)
        # The quick upper bounds first: most pairs are far apart.
        if matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold:
            if matcher.ratio() >= threshold:
                return True
    return False


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
    keep: list[str] = (),
    limit: int | None = None,
    near_duplicate: float = NEAR_DUPLICATE,
    **checks,
) -> Selection:
    """Clean and check (`check_prompt` with `checks`) the `candidates`, and keep the valid ones that
    repeat neither `keep` nor each other (compared after `normalise`: equal, "duplicate", or at
    least `near_duplicate` similar, "near-duplicate"), in order, until `keep` plus the new ones
    make `limit`."""
    selection = Selection(prompts=list(keep))
    seen = [normalise(p) for p in keep]
    for raw in candidates:
        if limit is not None and len(selection.prompts) >= limit:
            break
        prompt = clean_prompt(raw)
        reason = check_prompt(prompt, class_name, **checks)
        key = normalise(prompt)
        if reason is None and key in seen:
            reason = "duplicate"
        elif reason is None and near_duplicate_of(key, seen, near_duplicate):
            reason = "near-duplicate"
        if reason is not None:
            selection.rejected[reason] += 1
            continue
        seen.append(key)
        selection.prompts.append(prompt)
    return selection


def parse_response(
    text: str,
    class_name: str,
    *,
    keep: list[str] = (),
    limit: int | None = None,
    truncated: bool = False,
    **checks,
) -> Selection:
    """`select_prompts` over the candidates of one answer. When the answer was cut off by the
    token limit, its last candidate is incomplete: it is dropped and counted (`CUT_OFF`)."""
    candidates = split_candidates(text)
    cut = truncated and bool(candidates)
    if cut:
        candidates = candidates[:-1]
    selection = select_prompts(candidates, class_name, keep=keep, limit=limit, **checks)
    if cut:
        selection.rejected[CUT_OFF] += 1
    return selection
