"""What machine a benchmark ran on, in one line, for its printout and JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_line(device, *extra: str) -> str:
    """`machine: <GPU or CPU model>, <n> logical CPUs; <threads> torch threads; torch ..., <extra>, python ...`."""
    device = torch.device(device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    where = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        where = f"{where}, {os.cpu_count()} logical CPUs"
    versions = ", ".join([f"torch {torch.__version__}", *extra, f"python {platform.python_version()}"])
    return f"machine: {where}; {torch.get_num_threads()} torch threads; {versions}"


def load_line(own_threads: int | None = None) -> str:
    """The load average; with `own_threads` (how much of the load the benchmark itself accounts
    for) also a warning when other processes compete for the CPUs."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average: unknown"
    if own_threads is None:
        return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"
    busy = " (other processes compete for the CPUs: timings are noisy)" if one - own_threads >= 1.0 else ""
    own = f", this benchmark's own {own_threads} threads included" if own_threads else ""
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min){own}{busy}"
