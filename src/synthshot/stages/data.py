"""`data`: the few-shot split of the run (none when zero-shot) -> splits/<dataset>_shot<K>_seed<S>.json"""

from __future__ import annotations

from synthshot.config import write_resolved_config
from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def run(exp: Experiment, *, echo=print):
    from synthshot.data.fewshot import summarize_split

    data = exp.data
    write_resolved_config(exp.config, exp.layout.out)
    if data.split_file is None:
        echo(f"zero-shot: {len(data.split)} classes, no real images")
    else:
        echo(f"few-shot split: {data.split_file}")
        echo(summarize_split(data.split, data.counts))
    return data


STAGE = Stage(
    name="data",
    run=run,
    reads=("data",),
    ignores=("data.holdout_shots",),
    after=(),
    writes=lambda exp: [exp.split_file] if exp.split_file is not None else [],
)
