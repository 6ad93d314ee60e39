"""`prompts`: N prompts per class from the registry templates or an LLM (cached) -> prompts/prompts.json"""

from __future__ import annotations

from synthshot.config import write_resolved_config
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def run(exp: Experiment, *, echo=print) -> dict[str, list[str]]:
    from synthshot.prompts import write_class_prompts

    config = exp.config
    folder = exp.layout.prompts
    prompts = write_class_prompts(
        config.prompts,
        exp.data.class_names,
        folder,
        dataset=config.data.dataset,
        hub_options=exp.hub,
        device=exp.device,
        echo=echo,
    )
    write_resolved_config(config, folder)
    echo(f"prompts: {exp.layout.prompts_file} ({config.prompts.per_class} per class, {config.prompts.backend})")
    return prompts


STAGE = Stage(
    name="prompts",
    run=run,
    reads=("prompts", "data.dataset"),
    after=("data",),
    writes=lambda exp: [exp.layout.prompts_file],
)
