"""What a stage is: its name, what it reads, what it writes and its function, in one place.

`synthshot run` chains the stages from this declaration alone: a stage's fingerprint hashes the
config keys it `reads` and the fingerprints of the stages it comes `after`; it counts as finished
when its record carries that fingerprint and `done(experiment)` finds its outputs complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthshot.experiment import Experiment


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a stage, with what the stage had saved by then ("12 of 40 images saved").

    `Interrupted.last` keeps the newest such note for the command line's message: typer turns a
    KeyboardInterrupt into exit code 130 before synthshot's own handler sees the exception."""

    last: str | None = None

    def __init__(self, saved: str):
        super().__init__(saved)
        self.saved = saved
        Interrupted.last = saved


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., Any]  # run(experiment, *, echo=print, **options)
    reads: tuple[str, ...]  # dotted config keys (a section name reads the whole section)
    after: tuple[str, ...]  # the stages whose outputs it reads
    writes: Callable[[Experiment], list[Path]]  # the files (or folders) it writes
    done: Callable[[Experiment], bool] | None = None  # are the outputs complete? default: all `writes` exist
    ignores: tuple[str, ...] = field(default=())  # dotted keys inside `reads` that do not change its outputs

    def outputs_complete(self, experiment: Experiment) -> bool:
        if self.done is not None:
            return self.done(experiment)
        return all(path.exists() for path in self.writes(experiment))
