"""The monitor's statistics in plain Python: binned distributions, PSI and hit rate at K.

Binning: a histogram's ``edges`` cut the number line into ``len(edges) + 1`` bins whose outer
bins are open-ended. Bin 0 holds the values below ``edges[0]``, bin ``i`` the values ``v``
with ``edges[i - 1] <= v < edges[i]`` and the last bin the values from ``edges[-1]`` up; with
no edges there is one bin of every value. Training writes the baseline's edges and
proportions with this rule (``training/recommender/baseline.py``), and the monitor bins the
serving values with :func:`bin_index`, so both sides count a value equal to an edge alike.

The population stability index compares two binned distributions ``e`` (expected, the
baseline) and ``a`` (actual, recent serving)::

    PSI = sum over bins of (a - e) * ln(a / e)

with empty bins floored at a small ``epsilon``, since the logarithm of 0 is undefined. It is
0 for identical distributions and grows with the shift; by the usual rule of thumb 0.1 is a
moderate shift and 0.25 a major one.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_EPSILON = 1e-4
# Proportions read from JSON add up to 1 only up to rounding.
_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Histogram:
    """A distribution as the shares of its values in the bins cut at ``edges``.

    Raises ``ValueError`` unless the edges are finite and strictly increasing and the
    proportions (one more than the edges) are non-negative and add up to 1.
    """

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        if not all(math.isfinite(edge) for edge in self.edges):
            raise ValueError("edges must be finite numbers")
        if any(left >= right for left, right in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if len(self.proportions) != len(self.edges) + 1:
            raise ValueError(
                f"{len(self.proportions)} proportions for {len(self.edges)} edges; "
                "there must be one more proportion than edges"
            )
        if not all(math.isfinite(share) and share >= 0 for share in self.proportions):
            raise ValueError("proportions must be finite numbers >= 0")
        if abs(sum(self.proportions) - 1) > _SUM_TOLERANCE:
            raise ValueError(f"proportions add up to {sum(self.proportions)!r}, not 1")


def is_finite_number(value: object) -> bool:
    """Whether a parsed JSON value is a finite number: an int or float (a bool is neither in
    JSON), and neither NaN nor an infinity, which json.loads accepts."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def bin_index(value: float, edges: Sequence[float]) -> int:
    """Return the bin of ``value`` among the bins cut at ``edges`` (see the module's rule)."""
    return bisect_right(edges, value)


def bin_counts(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Return how many of ``values`` fall into each of the ``len(edges) + 1`` bins."""
    counts = [0] * (len(edges) + 1)
    for value in values:
        counts[bin_index(value, edges)] += 1
    return counts


def shares(counts: Sequence[int]) -> list[float]:
    """Return each count's share of the total; all zeros when there is nothing counted."""
    total = sum(counts)
    return [count / total if total else 0.0 for count in counts]


def proportions(values: Iterable[float], edges: Sequence[float]) -> list[float]:
    """Return the share of ``values`` in each bin cut at ``edges``.

    No values give all zeros, which :func:`population_stability_index` reads as a
    distribution without observations.
    """
    return shares(bin_counts(values, edges))


def population_stability_index(
    expected: Sequence[float], actual: Sequence[float], *, epsilon: float = DEFAULT_EPSILON
) -> float | None:
    """Return the PSI of ``actual`` against ``expected``, two proportions over the same bins.

    Proportions below ``epsilon`` count as ``epsilon``. Returns None when ``actual`` holds no
    observations (every proportion 0): no recent data is not the same as no drift. Raises
    ``ValueError`` when the two have different numbers of bins, have none, or a proportion
    is negative.
    """
    if len(expected) != len(actual):
        raise ValueError(
            f"expected has {len(expected)} bins and actual {len(actual)}; PSI needs the same bins"
        )
    if not expected:
        raise ValueError("PSI needs at least one bin")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon!r}")
    if any(share < 0 for share in (*expected, *actual)):
        raise ValueError("proportions must not be negative")
    if not any(actual):
        return None
    return math.fsum(
        (a - e) * math.log(a / e)
        for e, a in zip(
            (max(share, epsilon) for share in expected),
            (max(share, epsilon) for share in actual),
            strict=True,
        )
    )


def is_hit(
    recommended: Sequence[str],
    plays: Mapping[str, Sequence[int]],
    *,
    k: int,
    start: int,
    end: int,
) -> bool:
    """Whether any of the first ``k`` recommended titles was played in ``[start, end)``.

    ``plays`` maps a title to the member's play times of it in ascending order; the times and
    the bounds share one unit (the monitor uses epoch milliseconds).
    """
    for title in recommended[:k]:
        times = plays.get(title, ())
        first = bisect_left(times, start)
        if first < len(times) and times[first] < end:
            return True
    return False


def hit_rate(*, hits: int, predictions: int) -> float | None:
    """Return the hit rate at K of ``predictions`` judged recommendations, ``hits`` of them
    followed by a play; None when none was judged, which is unknown rather than 0."""
    if not 0 <= hits <= predictions:
        raise ValueError(f"{hits} hits among {predictions} predictions")
    return hits / predictions if predictions else None
