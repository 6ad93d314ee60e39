"""The offline `template` backend: class prompts from the dataset registry's templates, or from
generic photo templates when no dataset is named."""

from __future__ import annotations

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


def template_prompts(name: str, n: int, templates: tuple[str, ...]) -> list[str]:
    """Exactly `n` prompts for class `name`: the templates in order, cycled when there are fewer."""
    return [t.format(name) for t in islice(cycle(templates), n)]
