"""What the LLM is asked (LGCLIP): N visual descriptions of a class, each "{class}, which has ...",
varied in viewpoint, one per line and without numbering."""

from __future__ import annotations

import re

from synthshot.errors import ConfigError

SYSTEM_MESSAGE = "You write short, concrete visual descriptions that a text-to-image model can draw."

# In our words, after the official LGCLIP request: the "{name}, which has ..." form, clear visual
# features without exaggeration, different angles, nothing but the descriptions.
DEFAULT_INSTRUCTION = (
    "Write {n} different visual descriptions of {name} for a text-to-image model. "
    'Each description is one sentence of the form "{name}, which has ...", naming clear visual features '
    "(shape, colours, texture, parts, typical surroundings) without exaggeration. "
    "Show {name} from a different viewpoint or distance in each one (front, side, back, above, close-up, far away). "
    "Write only the descriptions, one per line, with no numbering, bullets, quotes or other text."
)


def instruction_template(instruction: str | None) -> str:
    """The configured instruction, or LGCLIP's; it must say where the class name goes."""
    template = DEFAULT_INSTRUCTION if instruction is None else instruction
    if "{name}" not in template:
        raise ConfigError(
            f"prompts.instruction {template[:60]!r}... has no '{{name}}' where the class name goes: add it "
            "(and '{n}' for the number of prompts)"
        )
    return template


# The form an instruction quotes: "{name}, which has ..." in double, single, curly or no quotes
# (unquoted, it must end in an ellipsis: "Describe {name}, then ..." is no form). The part after
# {name} runs to the closing quote, a line end or a brace.
_FORM = re.compile(r"""(?P<quote>["'“‘«`]?)\{name\}(?P<rest>\s*,[^"'”’»`\n{]*)""")
_ELLIPSIS = re.compile(r"\.\.\.|…")


def class_form(template: str) -> str | None:
    """What the instruction asks every prompt to begin with after the class name, e.g. ", which has"
    for '... of the form "{name}, which has ..."', or None when it quotes no such form."""
    for match in _FORM.finditer(template):
        rest = match.group("rest")
        ellipsis = _ELLIPSIS.search(rest)
        if ellipsis is None and not match.group("quote"):
            continue
        lead = " ".join(rest[: ellipsis.start() if ellipsis else len(rest)].split())
        return lead.rstrip(" .;:") or ","
    return None


def asks_class_first(template: str) -> bool:
    """Whether the instruction asks for prompts that begin with the class name (it quotes a form
    such as "{name}, which has ..."): answers are then held to it (see `class_form`)."""
    return class_form(template) is not None


def render_instruction(template: str, name: str, n: int) -> str:
    """The instruction for one request: `n` prompts for class `name`. A follow-up request asks the
    same way for the prompts still missing; it lists none of those kept, which small models copy
    back: another seed (and temperature) makes its answer differ."""
    # str.replace, not str.format: a user's instruction may hold other braces.
    return template.replace("{n}", str(n)).replace("{name}", name)


def build_messages(template: str, name: str, n: int) -> list[dict[str, str]]:
    """The chat messages of one request (OpenAI format)."""
    return [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": render_instruction(template, name, n)},
    ]
