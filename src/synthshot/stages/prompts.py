"""`prompts`: N prompts per class from the registry templates or an LLM (cached) -> prompts/prompts.json"""

from __future__ import annotations

from synthshot.config import write_resolved_config
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def prompt_settings(config):
    """The prompts settings the stage works with: generation.prompt_cycle: first draws only each
    class's first prompt, so unless prompts.min_per_class says otherwise one valid prompt is enough
    (a class with fewer than per_class goes on with a warning)."""
    settings = config.prompts
    if settings.min_per_class is None and config.generation.prompt_cycle == "first":
        settings = settings.model_copy(update={"min_per_class": 1})
    return settings


def run(exp: Experiment, *, echo=print) -> dict[str, list[str]]:
    from synthshot.prompts import write_class_prompts

    config = exp.config
    folder = exp.layout.prompts
    prompts = write_class_prompts(
        prompt_settings(config),
        exp.data.class_names,
        folder,
        dataset=config.data.dataset,
        hub_options=exp.hub,
        device=exp.device,
        echo=echo,
        diffusion=config.models.diffusion,
    )
    write_resolved_config(config, folder)  # write_class_prompts said where the prompts are and how many
    return prompts


STAGE = Stage(
    name="prompts",
    run=run,
    reads=("prompts", "data.dataset", "generation.prompt_cycle", "models.diffusion"),
    after=("data",),
    writes=lambda exp: [exp.layout.prompts_file],
)
