"""Which timesteps the denoising loop visits: the scheduler's own spacing, or Align Your Steps.

Align Your Steps (Sabour, Fidler and Kreis, ICML 2024) optimised a 10-step schedule for Stable
Diffusion 1.5, shipped by diffusers as `AysSchedules["StableDiffusionTimesteps"]`. For other step
counts the schedule is interpolated log-linearly in noise level (sigma), as the AYS authors
recommend: the 10 published timesteps become sigmas of the model's own noise schedule, log sigma
is interpolated linearly at the new count of evenly spaced positions, and each interpolated sigma
becomes the (rounded) timestep whose sigma it is.

What the schedule costs in accuracy is not measured by this project: measure it with a sweep.
"""

from __future__ import annotations

import inspect

import numpy as np

from synthshot.errors import ConfigError

SCHEDULES = ("default", "ays")


def check_schedule(name: str) -> str:
    if name not in SCHEDULES:
        raise ConfigError(f"timestep_schedule {name!r} is not one of {', '.join(SCHEDULES)}")
    return name


def ays_timesteps(scheduler, steps: int) -> list[int]:
    """Align Your Steps' SD-1.5 timesteps for `steps` steps (the published ones for 10)."""
    from diffusers.schedulers import AysSchedules

    base = list(AysSchedules["StableDiffusionTimesteps"])
    if steps == len(base):
        return base
    if steps < 2:
        raise ConfigError(f"timestep_schedule ays needs at least 2 steps, got {steps}")
    alphas = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
    if len(alphas) <= max(base):
        raise ConfigError(
            f"timestep_schedule ays is made for 1000 training timesteps; this scheduler has {len(alphas)}"
        )
    log_sigmas = np.log(np.sqrt((1.0 - alphas) / alphas))  # increasing with the timestep
    published = log_sigmas[base]
    wanted = np.interp(np.linspace(0.0, 1.0, steps), np.linspace(0.0, 1.0, len(base)), published)
    timesteps = np.rint(np.interp(wanted, log_sigmas, np.arange(len(alphas)))).astype(int).tolist()
    if any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ConfigError(
            f"timestep_schedule ays cannot spread {steps} steps over distinct timesteps: use fewer steps"
        )
    return timesteps


def set_timesteps(scheduler, steps: int, schedule: str = "default", device=None) -> None:
    """Set the scheduler's timesteps for `steps` denoising steps by the named schedule."""
    check_schedule(schedule)
    if schedule == "default":
        scheduler.set_timesteps(steps, device=device)
        return
    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ConfigError(
            f"timestep_schedule ays needs a scheduler that takes given timesteps (dpm, euler); "
            f"{type(scheduler).__name__} does not: set generation.scheduler to dpm or euler"
        )
    scheduler.set_timesteps(timesteps=ays_timesteps(scheduler, steps), device=device)
