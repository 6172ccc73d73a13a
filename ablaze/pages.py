"""The server-rendered pages: the list of experiments and one experiment's results.

The results page draws each treatment's effect with its fixed-horizon and anytime-valid
intervals as an inline SVG chart around a zero line; :func:`interval_chart` works out the
geometry so that the template only places it. Templates autoescape everything they insert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from ablaze.experiments import METRIC_DESCRIPTIONS, Experiment, MetricKind
from ablaze.results import Comparison, Interval, Result

CHART_WIDTH = 260
CHART_HEIGHT = 72
# The bottom strip holds the axis labels.
CHART_AXIS_HEIGHT = 16
CHART_MARGIN = 14
# Room around the widest interval, so that its ends are not drawn on the chart's edge.
CHART_PADDING = 1.1

_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, kw_only=True)
class ChartRow:
    """One interval: its ends and estimate in pixels, and whether it excludes zero."""

    label: str
    y: float
    low: float
    high: float
    effect: float
    excludes_zero: bool


@dataclass(frozen=True, kw_only=True)
class IntervalChart:
    """Pixel geometry; ``extent`` is the effect at either edge (minus on the left)."""

    width: int
    height: int
    axis_y: float
    zero: float
    extent: float
    rows: tuple[ChartRow, ...]


def interval_chart(comparison: Comparison) -> IntervalChart | None:
    """The chart of the comparison's two intervals, or None when it has no estimate.

    The horizontal scale is symmetric around 0 and fits the widest interval end.
    """
    if comparison.effect is None or comparison.fixed is None or comparison.sequential is None:
        return None
    effect = comparison.effect
    intervals = (("fixed horizon", comparison.fixed), ("anytime valid", comparison.sequential))
    ends = [abs(value) for _, interval in intervals for value in (interval.low, interval.high)]
    extent = max(ends) * CHART_PADDING or 1.0
    zero = CHART_WIDTH / 2
    scale = (CHART_WIDTH / 2 - CHART_MARGIN) / extent
    row_height = (CHART_HEIGHT - CHART_AXIS_HEIGHT) / len(intervals)

    def x(value: float) -> float:
        return round(zero + value * scale, 2)

    return IntervalChart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        axis_y=CHART_HEIGHT - 4,
        zero=zero,
        extent=extent,
        rows=tuple(
            ChartRow(
                label=label,
                y=round(row_height * (index + 0.5), 2),
                low=x(interval.low),
                high=x(interval.high),
                effect=x(effect),
                excludes_zero=interval.excludes_zero,
            )
            for index, (label, interval) in enumerate(intervals)
        ),
    )


def value_text(value: float, kind: MetricKind) -> str:
    """A cell's value: a proportion in percent, a mean with 4 significant digits."""
    return f"{value * 100:.2f}%" if kind == "proportion" else f"{value:.4g}"


def effect_text(value: float, kind: MetricKind) -> str:
    """A difference: in percentage points for proportions, signed."""
    return f"{value * 100:+.2f} pp" if kind == "proportion" else f"{value:+.4g}"


def interval_text(interval: Interval, kind: MetricKind) -> str:
    return f"[{effect_text(interval.low, kind)}, {effect_text(interval.high, kind)}]"


def p_value_text(p_value: float | None) -> str:
    """``p = 0.0312``, ``p < 0.0001``, or ``n/a`` when there is none."""
    if p_value is None:
        return "n/a"
    return "p < 0.0001" if p_value < 0.0001 else f"p = {p_value:.4f}"


_TEMPLATES.filters.update(
    value_text=value_text,
    effect_text=effect_text,
    interval_text=interval_text,
    p_value_text=p_value_text,
)


def experiments_page(experiments: Sequence[Experiment], *, prefix: str) -> str:
    """Every experiment, newest first, linking to its page."""
    newest_first = sorted(experiments, key=lambda e: (e.created_at, e.id), reverse=True)
    return _TEMPLATES.get_template("index.html").render(experiments=newest_first, prefix=prefix)


def experiment_page(
    experiment: Experiment,
    result: Result | None,
    *,
    prefix: str,
    unusable_reason: str | None = None,
) -> str:
    """The experiment's cells and state and, when there is a result, every metric's effects
    with their intervals, and the sample-ratio verdict at the top. Without a result,
    ``unusable_reason`` says why the latest observations could not be analysed, if any were
    written."""
    return _TEMPLATES.get_template("experiment.html").render(
        experiment=experiment,
        result=result,
        unusable_reason=unusable_reason,
        prefix=prefix,
        descriptions=METRIC_DESCRIPTIONS,
        chart=interval_chart,
    )
