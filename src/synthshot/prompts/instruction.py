"""What the LLM is asked (LGCLIP): N visual descriptions of a class, each "{class}, which has ...",
varied in viewpoint, one per line and without numbering."""

from __future__ import annotations

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


def asks_class_first(template: str) -> bool:
    """Whether the instruction asks for prompts that begin with the class name (it quotes a form
    such as "{name}, which has ..."): answers are then held to it."""
    return '"{name}' in template


def render_instruction(template: str, name: str, n: int, have: list[str] = ()) -> str:
    """The instruction for one request: `n` more prompts for class `name`, listing those already
    written (a follow-up request) so that the model writes different ones."""
    # str.replace, not str.format: a user's instruction may hold other braces.
    text = template.replace("{n}", str(n)).replace("{name}", name)
    if have:
        text += "\nThese descriptions are already written; write new ones that differ from them:\n" + "\n".join(have)
    return text


def build_messages(template: str, name: str, n: int, have: list[str] = ()) -> list[dict[str, str]]:
    """The chat messages of one request (OpenAI format)."""
    return [
        {"role": "system", "content": SYSTEM_MESSAGE},
        {"role": "user", "content": render_instruction(template, name, n, have)},
    ]
