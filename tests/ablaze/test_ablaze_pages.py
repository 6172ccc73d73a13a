"""The chart geometry and number formats of the results page (ablaze/pages.py)."""

from __future__ import annotations

import pytest

from ablaze.pages import (
    CHART_MARGIN,
    CHART_WIDTH,
    effect_text,
    interval_chart,
    p_value_text,
    value_text,
)
from ablaze.results import Comparison, Interval


def comparison(fixed: tuple[float, float], sequential: tuple[float, float]) -> Comparison:
    return Comparison(
        treatment="treatment",
        control="control",
        effect=(fixed[0] + fixed[1]) / 2,
        fixed=Interval(low=fixed[0], high=fixed[1], p_value=0.01),
        sequential=Interval(low=sequential[0], high=sequential[1], p_value=0.2),
        srm_p_value=0.5,
        trustworthy=True,
        problems=[],
    )


def test_the_chart_is_centred_on_zero_and_fits_the_widest_end() -> None:
    chart = interval_chart(comparison((0.01, 0.03), (-0.01, 0.05)))
    assert chart.zero == CHART_WIDTH / 2
    assert chart.extent == pytest.approx(0.055)
    fixed, sequential = chart.rows
    assert (fixed.label, sequential.label) == ("fixed horizon", "anytime valid")
    assert fixed.y < sequential.y < chart.axis_y
    # 0.05 is the widest end: it sits a tenth of the half width inside the right margin.
    half = CHART_WIDTH / 2 - CHART_MARGIN
    assert sequential.high == pytest.approx(chart.zero + half / 1.1, abs=0.01)
    assert sequential.low < chart.zero < sequential.high
    assert (
        fixed.effect
        == sequential.effect
        == pytest.approx(chart.zero + 0.02 / 0.055 * half, abs=0.01)
    )
    assert (fixed.excludes_zero, sequential.excludes_zero) == (True, False)


def test_a_comparison_without_an_estimate_has_no_chart() -> None:
    empty = comparison((0.0, 0.0), (0.0, 0.0)).model_copy(
        update={"effect": None, "fixed": None, "sequential": None}
    )
    assert interval_chart(empty) is None


def test_a_zero_width_chart_still_has_a_scale() -> None:
    assert interval_chart(comparison((0.0, 0.0), (0.0, 0.0))).extent == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (value_text(0.2391, "proportion"), "23.91%"),
        (value_text(2.13456, "mean"), "2.135"),
        (effect_text(0.039, "proportion"), "+3.90 pp"),
        (effect_text(-0.1234, "mean"), "-0.1234"),
        (p_value_text(0.03125), "p = 0.0312"),
        (p_value_text(2e-9), "p < 0.0001"),
        (p_value_text(None), "n/a"),
    ],
)
def test_numbers_are_written_for_people(text: str, expected: str) -> None:
    assert text == expected
