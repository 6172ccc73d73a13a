"""Tests for jobs.monitoring.statistics: binning, the population stability index, hit rate."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
from scipy import special

from jobs.monitoring import statistics
from jobs.monitoring.statistics import Histogram, population_stability_index

# --- binning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-100.0, 0), (1.999, 0), (2.0, 1), (2.5, 1), (3.0, 2), (1e9, 2)],
)
def test_a_value_on_an_edge_belongs_to_the_bin_above(value, expected):
    assert statistics.bin_index(value, (2.0, 3.0)) == expected


def test_without_edges_every_value_is_in_the_one_bin():
    assert statistics.bin_counts([-1e9, 0.0, 1e9], ()) == [3]


def test_proportions_are_the_shares_of_the_values_in_each_bin():
    assert statistics.proportions([1.0, 2.0, 2.0, 3.0, 10.0], (2.0, 3.0)) == [0.2, 0.4, 0.4]


def test_proportions_of_no_values_are_all_zero():
    assert statistics.proportions([], (2.0, 3.0)) == [0.0, 0.0, 0.0]


def test_histogram_accepts_proportions_that_add_up_to_one_up_to_rounding():
    histogram = Histogram(edges=(1.0, 2.0), proportions=(0.1, 0.2, 0.7000000001))

    assert histogram.edges == (1.0, 2.0)


@pytest.mark.parametrize(
    ("edges", "proportions", "message"),
    [
        ((1.0,), (1.0,), "1 proportions for 1 edges; there must be one more proportion than edges"),
        ((2.0, 1.0), (0.5, 0.25, 0.25), "edges must be strictly increasing"),
        ((1.0, 1.0), (0.5, 0.25, 0.25), "edges must be strictly increasing"),
        ((math.inf,), (0.5, 0.5), "edges must be finite numbers"),
        ((1.0,), (1.5, -0.5), "proportions must be finite numbers >= 0"),
        ((1.0,), (0.5, 0.4), "proportions add up to 0.9, not 1"),
    ],
)
def test_histogram_rejects_inconsistent_bins(edges, proportions, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Histogram(edges=edges, proportions=proportions)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, True), (-2.5, True), (True, False), (math.nan, False), (-math.inf, False), ("1", False)],
)
def test_is_finite_number_takes_json_numbers_only(value, expected):
    assert statistics.is_finite_number(value) is expected


# --- population stability index -----------------------------------------------------------


def test_identical_distributions_have_no_drift():
    shares = [0.1, 0.2, 0.3, 0.4]

    assert population_stability_index(shares, shares) == pytest.approx(0.0, abs=1e-15)


def test_a_known_shift_gives_the_hand_computed_index():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 (ln 2 + ln 1.5) = 0.25 ln 3
    psi = population_stability_index([0.5, 0.5], [0.25, 0.75])

    assert psi == pytest.approx(0.25 * math.log(3), rel=1e-12)


def test_empty_bins_are_floored_at_epsilon():
    # The expected second bin is empty: it counts as 1e-4.
    psi = population_stability_index([1.0, 0.0], [0.5, 0.5])

    expected = (0.5 - 1.0) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi == pytest.approx(expected, rel=1e-12)


def test_a_larger_epsilon_softens_empty_bins():
    strict = population_stability_index([1.0, 0.0], [0.5, 0.5])
    soft = population_stability_index([1.0, 0.0], [0.5, 0.5], epsilon=0.01)

    assert soft is not None
    assert strict is not None
    assert soft < strict


def test_an_actual_without_observations_has_no_index():
    assert population_stability_index([0.5, 0.5], statistics.proportions([], (1.0,))) is None


def test_a_single_bin_never_drifts():
    assert population_stability_index([1.0], [1.0]) == 0.0


@pytest.mark.parametrize(
    ("expected", "actual", "message"),
    [
        ([0.5, 0.5], [1.0], "expected has 2 bins and actual 1; PSI needs the same bins"),
        ([], [], "PSI needs at least one bin"),
        ([0.5, 0.5], [1.5, -0.5], "proportions must not be negative"),
    ],
)
def test_unusable_inputs_are_refused_in_one_line(expected, actual, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        population_stability_index(expected, actual)


def test_epsilon_must_be_positive():
    with pytest.raises(ValueError, match=r"^epsilon must be positive, got 0$"):
        population_stability_index([1.0], [1.0], epsilon=0)


def test_matches_the_symmetric_kullback_leibler_divergence_of_scipy():
    # PSI is KL(a || e) + KL(e || a); scipy's rel_entr computes each term independently.
    rng = np.random.default_rng(20_261_202)
    for _ in range(200):
        bins = int(rng.integers(1, 12))
        expected = rng.dirichlet(np.ones(bins))
        actual = rng.dirichlet(np.ones(bins))
        # Some empty bins on either side exercise the floor.
        expected[rng.random(bins) < 0.15] = 0
        actual[rng.random(bins) < 0.15] = 0
        if not actual.any() or not expected.any():
            continue
        floored_e = np.maximum(expected, 1e-4)
        floored_a = np.maximum(actual, 1e-4)
        reference = np.sum(
            special.rel_entr(floored_a, floored_e) + special.rel_entr(floored_e, floored_a)
        )

        psi = population_stability_index(expected.tolist(), actual.tolist())

        assert psi == pytest.approx(float(reference), rel=1e-9, abs=1e-12)


# --- hit rate -----------------------------------------------------------------------------

PLAYS = {"t1": [100, 200], "t2": [50], "t9": [150]}


@pytest.mark.parametrize(
    ("recommended", "start", "end", "expected"),
    [
        (["t1"], 100, 101, True),  # a play at the start counts
        (["t1"], 101, 200, False),  # the end is not part of the window
        (["t1"], 201, 300, False),  # every play was before
        (["t2", "t1"], 60, 150, True),  # any title of the list
        (["t3"], 0, 1000, False),  # never played
        (["t1", "t2", "t3", "t9"], 120, 160, False),  # t9 is beyond k = 3
        (["t1", "t2", "t9", "t3"], 120, 160, True),
    ],
)
def test_a_hit_is_a_play_of_a_top_k_title_inside_the_outcome_window(
    recommended, start, end, expected
):
    assert statistics.is_hit(recommended, PLAYS, k=3, start=start, end=end) is expected


def test_hit_rate_is_the_share_of_judged_predictions_that_hit():
    assert statistics.hit_rate(hits=3, predictions=4) == 0.75
    assert statistics.hit_rate(hits=0, predictions=5) == 0.0


def test_hit_rate_of_no_judged_prediction_is_unknown():
    assert statistics.hit_rate(hits=0, predictions=0) is None


def test_hit_rate_refuses_more_hits_than_predictions():
    with pytest.raises(ValueError, match=r"^3 hits among 2 predictions$"):
        statistics.hit_rate(hits=3, predictions=2)


def test_is_hit_finds_a_play_among_many_with_random_windows():
    # The bisection agrees with a linear scan of every play.
    rng = random.Random(7)
    plays = {f"t{index}": sorted(rng.sample(range(1000), 20)) for index in range(5)}
    for _ in range(500):
        start = rng.randrange(1000)
        end = start + rng.randrange(1, 100)
        titles = rng.sample(sorted(plays), 3)
        scan = any(start <= at < end for title in titles[:2] for at in plays[title])

        assert statistics.is_hit(titles, plays, k=2, start=start, end=end) is scan
