"""`report`: the run's HTML report -> report/index.html + PNGs"""

from __future__ import annotations

from synthshot.experiment import Experiment
from synthshot.stages.base import Stage


def run(exp: Experiment, *, echo=print):
    from synthshot.report import write_report

    return write_report(exp.layout.out, echo=echo)


STAGE = Stage(
    name="report",
    run=run,
    reads=(),
    after=("similarity", "generate", "evaluate", "finetune"),
    writes=lambda exp: [exp.layout.report / "index.html"],
)
