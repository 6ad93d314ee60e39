"""Which process this is, when a launcher (`torchrun`, `accelerate launch`, a cluster's MPI) runs
several: the launcher's own variables decide, and accelerate must agree.

`WORLD_SIZE`, `RANK` and `LOCAL_RANK` are set by the launcher for every process. accelerate's
`PartialState` reads them too, but on a machine without CUDA it reports a single process unless it
is told to use the CPU (then it joins the processes with the gloo backend); synthshot asks for the
CPU whenever the run's device is the CPU, and stops with a one-line error if accelerate's view
still disagrees with the launcher's, rather than letting every process believe it is the only one
(each would then do all the work and write every record).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from synthshot.errors import SynthshotError


@dataclass(frozen=True)
class Launch:
    """What the launcher says: this process's rank among `world` processes."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch() -> Launch:
    """The launcher's variables (one process when none are set); malformed values are an error."""
    values = {}
    for name, default in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", None)):
        raw = os.environ.get(name)
        try:
            values[name] = int(raw) if raw not in (None, "") else default
        except ValueError:
            raise SynthshotError(f"environment variable {name}={raw!r} is not a whole number: check the launcher") from None
    world, rank = values["WORLD_SIZE"], values["RANK"]
    local = values["LOCAL_RANK"] if values["LOCAL_RANK"] is not None else rank
    if world < 1 or not 0 <= rank < world:
        raise SynthshotError(f"RANK={rank} and WORLD_SIZE={world} from the launcher do not fit: check the launch command")
    return Launch(rank=rank, world=world, local_rank=local)


def is_main_process() -> bool:
    return launch().is_main


def process_state(device: str) -> Any | None:
    """accelerate's `PartialState` when the launcher runs several processes (None for one),
    checked against the launcher: the CPU backend (gloo) when `device` is the CPU."""
    info = launch()
    if info.world <= 1:
        return None
    from accelerate import PartialState

    state = PartialState(cpu=not str(device).startswith(("cuda", "mps", "xpu")))
    check_agrees(state.num_processes, state.process_index, info)
    return state


def check_agrees(num_processes: int, process_index: int, info: Launch | None = None) -> None:
    """Stop when accelerate's process count or index differs from the launcher's."""
    info = info or launch()
    if (num_processes, process_index) != (info.world, info.rank):
        raise SynthshotError(
            f"the launcher runs {info.world} process(es) and says this is rank {info.rank}, but accelerate sees "
            f"{num_processes} process(es) and index {process_index}: launch with `accelerate launch` or `torchrun` "
            "without overriding WORLD_SIZE/RANK, and on a machine without GPUs set device=cpu"
        )


@contextlib.contextmanager
def main_process_first(state) -> Iterator[None]:
    """The main process runs the block first (it prepares and writes), the others after it (they
    read what it wrote); with one process, just the block."""
    if state is None:
        yield
        return
    if not state.is_main_process:
        state.wait_for_everyone()
    yield
    if state.is_main_process:
        state.wait_for_everyone()


def wait_for_everyone(state) -> None:
    if state is not None:
        state.wait_for_everyone()
