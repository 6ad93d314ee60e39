"""`run.log` in every output folder: the console lines of the run, plus the debug detail of the
libraries' loggers and the time of each stage, with timestamps. Appended run after run, written by
the main process only (the file is synthshot's own, in a folder it claimed)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from synthshot.distributed import is_main_process

RUN_LOG = "run.log"
CONSOLE = logging.getLogger("synthshot.console")  # the echoed lines, for run.log only
CONSOLE.propagate = False
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def run_log(folder: str | Path, echo: Callable[[str], object]) -> Iterator[Callable[[str], object]]:
    """Log into `folder/run.log` for the block; yield an echo that prints (as `echo` does) and logs."""
    path = (Path(folder) / RUN_LOG).resolve()
    loggers = [logging.getLogger("synthshot"), CONSOLE]
    if not is_main_process() or any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path
                                    for h in CONSOLE.handlers):
        # Another run_log writes this file already (a stage inside `run`), or not the main process.
        yield echo if getattr(echo, "logged", False) or not is_main_process() else _teed(echo)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FORMAT))
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    started = time.perf_counter()
    CONSOLE.debug("---- started")
    try:
        yield echo if getattr(echo, "logged", False) else _teed(echo)
    except BaseException as exc:
        CONSOLE.error("stopped by %s: %s", type(exc).__name__, exc)
        raise
    finally:
        CONSOLE.debug("---- ended after %.1f s", time.perf_counter() - started)
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)
        handler.close()


def _teed(echo: Callable[[str], object]) -> Callable[[str], object]:
    def say(message: str = "") -> None:
        echo(message)
        CONSOLE.info("%s", message)

    say.logged = True
    return say
