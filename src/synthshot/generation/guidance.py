"""Extended classifier-free guidance with a positive and a negative IP-Adapter (DIPSY Eq. 8, 9)."""

from __future__ import annotations

import math

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
