"""Extended classifier-free guidance with a positive and a negative IP-Adapter (DIPSY Eq. 8, 9)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from synthshot.errors import ConfigError


def check_scale(name: str, value: float) -> float:
    """Guidance scales are magnitudes: finite numbers >= 0 (the sign is in the formula)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"guidance scale {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"guidance scale {name}={value} must be a finite number >= 0: it is a magnitude, the negative "
            "direction is already part of the formula"
        )
    return float(value)


def dual_ip_guidance(
    e_uncond: Tensor,
    e_text: Tensor,
    e_pos: Tensor | None = None,
    e_neg: Tensor | None = None,
    *,
    w_text: float,
    w_pos: float = 0.0,
    w_neg: float = 0.0,
) -> Tensor:
    """Combine the noise predictions of one denoising step (DIPSY Eq. 9):

        eps = e_uncond + w_text (e_text - e_uncond) + w_pos (e_pos - e_text) - w_neg (e_neg - e_pos)

    e_uncond: no text, no image; e_text: text; e_pos: text + positive adapter; e_neg: text +
    positive + negative adapter. Without `e_neg` this is the single-adapter form (Eq. 8); without
    `e_pos` it is plain classifier-free guidance.
    """
    w_text = check_scale("w_text", w_text)
    w_pos = check_scale("w_pos", w_pos)
    w_neg = check_scale("w_neg", w_neg)
    eps = e_uncond + w_text * (e_text - e_uncond)
    if e_pos is None:
        if e_neg is not None:
            raise ConfigError("a negative-image prediction needs the positive one (e_pos) too")
        return eps
    eps = eps + w_pos * (e_pos - e_text)
    if e_neg is not None:
        eps = eps - w_neg * (e_neg - e_pos)
    return eps


def guidance_branches(mode: str) -> int:
    """Noise predictions per image and step: text-only 2, single adapter 3, dual 4."""
    branches = {"text": 2, "single": 3, "dual": 4}
    if mode not in branches:
        raise ConfigError(f"generation mode {mode!r} is not one of {', '.join(branches)}")
    return branches[mode]


# ------------------------------------------------------------------------ which branches run when
FULL_INTERVAL = (0.0, 1.0)


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must hold two numbers [lo, hi], got {value!r}")
    return float(value)


def check_interval(interval, name: str = "image_guidance_interval") -> tuple[float, float]:
    """[lo, hi] as fractions of the denoising trajectory (0 = before the first step, 1 = the end),
    with 0 <= lo <= hi <= 1; lo == hi is an empty interval (no image guidance at all)."""
    if isinstance(interval, (str, bytes, dict)) or not hasattr(interval, "__len__") or len(interval) != 2:
        raise ConfigError(f"{name} must be [lo, hi], two fractions of the trajectory, got {interval!r}")
    lo, hi = (_fraction(name, value) for value in interval)
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise ConfigError(
            f"{name} [{lo:g}, {hi:g}] must lie within [0, 1]: fractions of the denoising steps done "
            "(0 = the first, noisiest step; 1 = the end)"
        )
    if lo > hi:
        raise ConfigError(f"{name} [{lo:g}, {hi:g}] is reversed: lo must not exceed hi")
    return lo, hi


def check_cache_interval(value, name: str = "cache_interval") -> int:
    """The DeepCache interval k as an int >= 1 (None: 1, caching off)."""
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 (1 or null: caching off), got {value!r}")
    return value


def image_guidance_steps(steps: int, interval=FULL_INTERVAL) -> list[bool]:
    """Whether step i (0-based, of `steps`) runs the image branches: lo <= i / steps < hi.

    Kynkaanniemi et al. (2024) apply guidance only on a limited interval of the trajectory; here
    the interval is in steps done, so [0, 0.5] is the first half of the steps, whatever the noise
    schedule. The default [0, 1] holds every step (DIPSY's own behaviour)."""
    lo, hi = check_interval(interval)
    return [lo <= i / steps < hi for i in range(steps)]


@dataclass(frozen=True)
class PlannedStep:
    image: bool  # the image branches run (all `guidance_branches(mode)` of them); else only [uncond, text]
    full: bool  # the whole U-Net runs; else DeepCache's shallow path with the deep features of an earlier step

    def rows(self, mode: str) -> int:
        """U-Net evaluations per image at this step (the batch is `rows` times the images)."""
        return guidance_branches(mode) if self.image else 2


def step_plan(steps: int, mode: str, interval=FULL_INTERVAL, cache_interval: int | None = None) -> list[PlannedStep]:
    """What each denoising step evaluates.

    * image: inside the guidance interval the step runs all branches of the mode (dual: uncond,
      text, text + positive, text + positive + negative); outside it only uncond and text, and
      the prediction is plain classifier-free guidance. Text mode has no image branches.
    * full: with caching off (k = 1) every step is full. With k > 1 (DeepCache) a step is full
      when k steps have passed since the last full one, at the first step, and when it needs
      branches the cached features lack (the first step of the interval after text-only steps);
      other steps reuse the cached deep features. Leaving the interval needs no full step: the
      text pair is the first rows of the cached batch.
    """
    branches = guidance_branches(mode)
    images = image_guidance_steps(steps, interval) if branches > 2 else [False] * steps
    k = check_cache_interval(cache_interval)
    plan: list[PlannedStep] = []
    last_full, cached = None, 0
    for i, image in enumerate(images):
        rows = branches if image else 2
        full = k == 1 or last_full is None or i - last_full >= k or rows > cached
        if full:
            last_full, cached = i, rows
        plan.append(PlannedStep(image, full))
    return plan


def evaluations_per_image(plan: list[PlannedStep], mode: str) -> dict[str, int]:
    """U-Net evaluations per image over a plan: `full` whole-U-Net rows, `shallow` DeepCache rows."""
    return {
        "full": sum(step.rows(mode) for step in plan if step.full),
        "shallow": sum(step.rows(mode) for step in plan if not step.full),
    }
