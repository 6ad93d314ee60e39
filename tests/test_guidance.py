"""DIPSY Eq. 8 and 9 against their formulas."""

import pytest
import torch

from synthshot.errors import ConfigError
from synthshot.generation.guidance import dual_ip_guidance, guidance_branches


def predictions(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(4)]


def test_dual_matches_equation_9():
    e0, eT, eP, eN = predictions()
    got = dual_ip_guidance(e0, eT, eP, eN, w_text=7.5, w_pos=6.0, w_neg=6.0)
    expected = e0 + 7.5 * (eT - e0) + 6.0 * (eP - eT) - 6.0 * (eN - eP)
    torch.testing.assert_close(got, expected)


def test_expanded_form_coefficients_sum_to_one():
    e0, eT, eP, eN = predictions(1)
    wT, wP, wN = 7.5, 4.0, 2.5
    expanded = (1 - wT) * e0 + (wT - wP) * eT + (wP + wN) * eP - wN * eN
    torch.testing.assert_close(dual_ip_guidance(e0, eT, eP, eN, w_text=wT, w_pos=wP, w_neg=wN), expanded)
    assert (1 - wT) + (wT - wP) + (wP + wN) - wN == pytest.approx(1.0)
    # Coefficients summing to 1: equal predictions pass through unchanged.
    same = dual_ip_guidance(e0, e0, e0, e0, w_text=wT, w_pos=wP, w_neg=wN)
    torch.testing.assert_close(same, e0)


def test_single_adapter_is_equation_8():
    e0, eT, eP, _ = predictions(2)
    got = dual_ip_guidance(e0, eT, eP, w_text=7.5, w_pos=6.0, w_neg=6.0)
    torch.testing.assert_close(got, e0 + 7.5 * (eT - e0) + 6.0 * (eP - eT))


def test_text_only_is_classifier_free_guidance():
    e0, eT, _, _ = predictions(3)
    torch.testing.assert_close(dual_ip_guidance(e0, eT, w_text=5.0), e0 + 5.0 * (eT - e0))


def test_zero_image_scales_reduce_to_cfg():
    e0, eT, eP, eN = predictions(4)
    torch.testing.assert_close(
        dual_ip_guidance(e0, eT, eP, eN, w_text=7.5, w_pos=0.0, w_neg=0.0), dual_ip_guidance(e0, eT, w_text=7.5)
    )


@pytest.mark.parametrize("name", ["w_text", "w_pos", "w_neg"])
def test_negative_scale_is_an_error_naming_it(name):
    e0, eT, eP, eN = predictions()
    scales = {"w_text": 7.5, "w_pos": 6.0, "w_neg": 6.0, name: -1.0}
    with pytest.raises(ConfigError, match=f"{name}=-1.0 must be a finite number >= 0"):
        dual_ip_guidance(e0, eT, eP, eN, **scales)


@pytest.mark.parametrize("value", ["7.5", None, float("nan"), True])
def test_non_numeric_scale_is_an_error(value):
    e0, eT, _, _ = predictions()
    with pytest.raises(ConfigError, match="w_text"):
        dual_ip_guidance(e0, eT, w_text=value)


def test_negative_without_positive_is_refused():
    e0, eT, _, eN = predictions()
    with pytest.raises(ConfigError, match="e_pos"):
        dual_ip_guidance(e0, eT, None, eN, w_text=1.0)


def test_branch_counts():
    assert [guidance_branches(m) for m in ("text", "single", "dual")] == [2, 3, 4]
    with pytest.raises(ConfigError, match="triple"):
        guidance_branches("triple")


# ------------------------------------------------------------ guidance interval and caching plan
def test_image_guidance_steps_are_the_fractions_of_steps_done():
    from synthshot.generation.guidance import image_guidance_steps

    assert image_guidance_steps(10, (0.0, 1.0)) == [True] * 10  # DIPSY: every step
    assert image_guidance_steps(10, (0.0, 0.5)) == [True] * 5 + [False] * 5  # step i inside when lo <= i/10 < hi
    assert image_guidance_steps(10, (0.5, 1.0)) == [False] * 5 + [True] * 5
    assert image_guidance_steps(8, (0.3, 0.3)) == [False] * 8  # lo == hi: empty
    assert image_guidance_steps(4, (0.25, 0.5)) == [False, True, False, False]


@pytest.mark.parametrize("interval, message", [
    ((0.6, 0.2), r"\[0.6, 0.2\] is reversed"),
    ((-0.1, 0.5), r"must lie within \[0, 1\]"),
    ((0.0, 1.01), r"must lie within \[0, 1\]"),
    ((0.2,), "must be \\[lo, hi\\]"),
    ("0,1", "must be \\[lo, hi\\]"),
    ((0.0, float("nan")), "two numbers"),
])
def test_bad_intervals_are_refused(interval, message):
    from synthshot.generation.guidance import check_interval

    with pytest.raises(ConfigError, match=message):
        check_interval(interval)


def test_step_plan_counts():
    from synthshot.generation.guidance import evaluations_per_image, step_plan

    def closed_form(mode, steps, inside):
        return guidance_branches(mode) * inside + 2 * (steps - inside)

    for steps in (1, 7, 20, 50):
        for lo, hi in ((0.0, 1.0), (0.0, 0.5), (0.25, 0.75), (0.4, 0.4)):
            inside = sum(lo <= i / steps < hi for i in range(steps))
            for mode in ("dual", "single"):
                plan = step_plan(steps, mode, (lo, hi))
                assert evaluations_per_image(plan, mode) == {"full": closed_form(mode, steps, inside), "shallow": 0}
    # DeepCache without an interval: the whole U-Net every k-th step.
    for steps, k in ((10, 3), (50, 3), (25, 5), (7, 10)):
        full_steps = -(-steps // k)
        assert evaluations_per_image(step_plan(steps, "dual", cache_interval=k), "dual") == {
            "full": 4 * full_steps, "shallow": 4 * (steps - full_steps)}
    # Entering the interval needs the image rows, which the cache of text-only steps lacks.
    plan = step_plan(6, "dual", (0.5, 1.0), 10)
    assert [(s.image, s.full) for s in plan] == [(False, True), (False, False), (False, False),
                                                 (True, True), (True, False), (True, False)]
    with pytest.raises(ConfigError, match="cache_interval must be an integer >= 1"):
        step_plan(6, "dual", cache_interval=0)
