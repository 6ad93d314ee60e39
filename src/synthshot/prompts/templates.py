"""The offline `template` backend: class prompts from the dataset registry's templates, or from
generic photo templates when no dataset is named."""

from __future__ import annotations

import re
from itertools import cycle, islice

# Photo templates varied in viewpoint and scale, for datasets the registry does not know.
GENERIC_TEMPLATES = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a photo of a {} seen from the front.",
    "a photo of a {} seen from the side.",
    "a photo of a {} seen from above.",
    "a photo of a {} far away.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
)


def dataset_templates(dataset: str | None) -> tuple[str, ...]:
    """The registry's generation template then its zero-shot templates (repeats dropped), or the
    generic ones."""
    if dataset is None:
        return GENERIC_TEMPLATES
    from synthshot.data.registry import get_dataset

    info = get_dataset(dataset)
    return tuple(dict.fromkeys((info.template, *info.zeroshot_templates)))


# Words whose first letter's sound is not what the letter suggests (for "a" and "an").
_AN_EXCEPTIONS = ("hour", "honest", "honor", "honour", "heir", "herb")
_A_EXCEPTIONS = ("uni", "use", "usu", "uti", "ure", "euro", "eu", "one", "once", "ubiq", "uk", "ufo", "uganda",
                 "ukrain", "ute")
_ARTICLE = re.compile(r"\b([Aa])(n?) $")


def article(word: str) -> str:
    """The article before `word`: "an" before a vowel sound, else "a" (a heuristic: "an owl",
    "an hour", "a unicorn", "a one-way sign")."""
    lower = word.strip().lower()
    if lower.startswith(_AN_EXCEPTIONS):
        return "an"
    if lower.startswith(_A_EXCEPTIONS):
        return "a"
    return "an" if lower[:1] in ("a", "e", "i", "o", "u") else "a"


def fill_template(template: str, name: str) -> str:
    """`template.format(name)`, with an "a"/"an" just before the name made to fit it ("A photo of
    a {}" with "airplane" is "A photo of an airplane")."""
    marker = "\x00"
    pieces = template.format(marker).split(marker)
    for number, before in enumerate(pieces[:-1]):
        found = _ARTICLE.search(before)
        if found and name.strip():
            wanted = article(name)
            pieces[number] = before[: found.start()] + (wanted.capitalize() if found.group(1) == "A" else wanted) + " "
    return name.join(pieces)


def template_prompts(name: str, n: int, templates: tuple[str, ...]) -> list[str]:
    """Exactly `n` prompts for class `name`: the templates in order, cycled when there are fewer,
    each with "a" or "an" fitting the name (`fill_template`)."""
    return [fill_template(t, name) for t in islice(cycle(templates), n)]
