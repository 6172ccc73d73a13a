"""The statistics (ablaze/statistics.py) against SciPy, and by simulation: planted effects are
found, A/A tests reject at about alpha, peeking daily inflates the fixed-horizon test but not
the confidence sequence, and a broken split is flagged.

Simulated rates are compared with their expectation within 3 binomial standard deviations
of the number of simulations, ``3 sqrt(alpha (1 - alpha) / sims)``: a correct method misses
that band about 3 times in 1,000, and the seeds are fixed, so the tests do not flake.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from ablaze.statistics import (
    SRM_THRESHOLD,
    InsufficientDataError,
    Sample,
    anytime_valid,
    chi_square_upper_tail,
    fixed_horizon,
    regularized_incomplete_beta,
    sample_ratio,
    student_t_quantile,
    student_t_upper_tail,
    two_proportion_z_test,
    welch_t_test,
)

ALPHA = 0.05


def band(rate: float, sims: int) -> float:
    """Three binomial standard deviations of a rate estimated from ``sims`` simulations."""
    return 3 * math.sqrt(rate * (1 - rate) / sims)


def proportion(successes: int, n: int) -> Sample:
    return Sample.of_counts(n=int(n), successes=int(successes))


# --- against SciPy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("treatment", "control"),
    [((130, 1000), (100, 1000)), ((5, 40), (9, 35)), ((4_900, 50_000), (5_000, 51_000))],
)
def test_the_z_test_is_the_normal_computation(treatment, control) -> None:
    (x_t, n_t), (x_c, n_c) = treatment, control
    p_t, p_c = x_t / n_t, x_c / n_c
    standard_error = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    z = (p_t - p_c) / standard_error
    estimate = two_proportion_z_test(proportion(x_t, n_t), proportion(x_c, n_c), alpha=0.1)
    assert estimate.effect == pytest.approx(p_t - p_c, abs=1e-15)
    assert estimate.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    margin = stats.norm.ppf(0.95) * standard_error
    assert estimate.low == pytest.approx(p_t - p_c - margin, rel=1e-9)
    assert estimate.high == pytest.approx(p_t - p_c + margin, rel=1e-9)
    assert estimate.significant is (estimate.p_value < 0.1)


@pytest.mark.parametrize(
    ("sizes", "scales", "shift"),
    [
        ((5, 7), (1.0, 3.0), 0.5),
        ((30, 300), (2.0, 0.5), 0.2),
        ((2, 2), (1.0, 1.0), 1.0),
        ((5_000, 4_000), (1.0, 1.2), 0.03),
    ],
)
def test_welch_matches_scipy(sizes, scales, shift) -> None:
    rng = np.random.default_rng(sum(sizes))
    treatment = rng.normal(shift, scales[0], sizes[0])
    control = rng.normal(0.0, scales[1], sizes[1])
    expected = stats.ttest_ind(treatment, control, equal_var=False)
    interval = expected.confidence_interval(0.95)
    estimate = welch_t_test(Sample.of(list(treatment)), Sample.of(list(control)))
    assert estimate.effect == pytest.approx(treatment.mean() - control.mean(), rel=1e-12)
    assert estimate.p_value == pytest.approx(expected.pvalue, rel=1e-8)
    assert estimate.low == pytest.approx(interval.low, rel=1e-9)
    assert estimate.high == pytest.approx(interval.high, rel=1e-9)


@pytest.mark.parametrize("degrees", [0.7, 1, 2.5, 9, 61.3, 1_000, 250_000])
def test_student_t_tail_and_quantile_match_scipy(degrees: float) -> None:
    for t in (0.0, 0.3, 1.0, 2.2, 6.0, 40.0):
        assert student_t_upper_tail(t, degrees) == pytest.approx(stats.t.sf(t, degrees), rel=1e-9)
    for probability in (0.5, 0.8, 0.975, 0.9995):
        assert student_t_quantile(probability, degrees) == pytest.approx(
            stats.t.ppf(probability, degrees), rel=1e-9, abs=1e-12
        )


def test_the_incomplete_beta_matches_scipy() -> None:
    for a in (0.5, 1.0, 3.7, 120.0, 40_000.0):
        for b in (0.5, 2.0, 9.0):
            for x in (0.0, 0.001, 0.2, 0.5, 0.93, 0.99999, 1.0):
                assert regularized_incomplete_beta(a, b, x) == pytest.approx(
                    special.betainc(a, b, x), rel=1e-9, abs=1e-300
                )


@pytest.mark.parametrize("degrees", [1, 2, 3, 4, 7, 12])
def test_the_chi_square_tail_matches_scipy(degrees: int) -> None:
    for statistic in (0.0, 0.01, 1.0, 3.8, 15.0, 90.0):
        assert chi_square_upper_tail(statistic, degrees) == pytest.approx(
            stats.chi2.sf(statistic, degrees), rel=1e-10, abs=1e-300
        )


def test_the_sample_ratio_test_is_scipys_chisquare() -> None:
    counts, shares = [5_120, 4_890, 10_050], [25.0, 25.0, 50.0]
    total = sum(counts)
    expected = stats.chisquare(counts, [total * share / 100 for share in shares])
    check = sample_ratio(counts, shares)
    assert check.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert check.p_value == pytest.approx(expected.pvalue, rel=1e-10)


def test_the_confidence_sequence_is_the_papers_formula() -> None:
    treatment, control = proportion(1_300, 10_000), proportion(1_200, 10_000)
    estimate = anytime_valid(treatment, control, kind="proportion", tightest_at=50_000)
    # Waudby-Smith et al., Theorem 2.2, with t = n_t + n_c and sigma^2 = t V.
    t = 20_000
    variance = 0.13 * 0.87 / 10_000 + 0.12 * 0.88 / 10_000
    sigma = math.sqrt(t * variance)
    rho_squared = (-2 * math.log(ALPHA) + math.log(-2 * math.log(ALPHA) + 1)) / 50_000
    margin = sigma * math.sqrt(
        2
        * (t * rho_squared + 1)
        / (t**2 * rho_squared)
        * math.log(math.sqrt(t * rho_squared + 1) / ALPHA)
    )
    assert estimate.effect == pytest.approx(0.01)
    assert estimate.low == pytest.approx(0.01 - margin, rel=1e-9)
    assert estimate.high == pytest.approx(0.01 + margin, rel=1e-9)


def test_the_always_valid_p_value_is_below_alpha_exactly_when_the_interval_excludes_zero() -> None:
    control = proportion(1_200, 10_000)
    decisions = set()
    for successes in range(1_150, 1_450, 5):
        estimate = anytime_valid(
            proportion(successes, 10_000), control, kind="proportion", tightest_at=20_000
        )
        assert 0 < estimate.p_value <= 1
        assert estimate.significant is (estimate.p_value < ALPHA)
        decisions.add(estimate.significant)
    assert decisions == {True, False}


def test_the_sequence_is_wider_than_the_fixed_interval_and_narrowest_where_tuned() -> None:
    def half_width(members: int) -> float:
        half = Sample(n=members // 2, mean=2.0, variance=1.0)
        estimate = anytime_valid(half, half, kind="mean", tightest_at=10_000)
        fixed = fixed_horizon(half, half, kind="mean")
        assert estimate.high - estimate.low > fixed.high - fixed.low
        # In units of the standard error, which shrinks as members arrive.
        return (estimate.high - estimate.low) / 2 * math.sqrt(members / 4)

    widths = {members: half_width(members) for members in range(1_000, 40_000, 500)}
    assert 8_000 <= min(widths, key=widths.get) <= 12_500


# --- insufficient data --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Sample.of([1.0]), "a sample needs 2 values, got 1"),
        (lambda: Sample.of_counts(n=5, successes=6), "successes must be between 0 and n=5"),
        (
            lambda: welch_t_test(Sample(n=1, mean=1, variance=0), Sample(n=5, mean=1, variance=1)),
            "the treatment needs 2 members for a mean, has 1",
        ),
        (
            lambda: two_proportion_z_test(proportion(0, 10), proportion(0, 10)),
            "neither cell varies",
        ),
        (
            lambda: two_proportion_z_test(proportion(0, 0), proportion(1, 10)),
            "the treatment has no members",
        ),
        (lambda: sample_ratio([0, 0], [50, 50]), "no member is counted in any cell"),
    ],
)
def test_too_little_data_is_an_error_that_says_so(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_insufficient_data_is_its_own_error() -> None:
    with pytest.raises(InsufficientDataError):
        Sample.of([])


def test_a_proportion_sample_from_counts() -> None:
    sample = Sample.of_counts(n=4, successes=1)
    assert (sample.n, sample.mean) == (4, 0.25)
    assert sample.variance == pytest.approx(np.var([1, 0, 0, 0], ddof=1))


# --- simulations --------------------------------------------------------------------------


def rejects(estimates) -> np.ndarray:
    return np.array([estimate.p_value < ALPHA for estimate in estimates])


def test_a_planted_effect_is_found_by_both_methods() -> None:
    rng = np.random.default_rng(11)
    sims, n = 200, 10_000
    control = rng.binomial(n, 0.10, sims)
    treatment = rng.binomial(n, 0.12, sims)
    pairs = [(proportion(t, n), proportion(c, n)) for t, c in zip(treatment, control, strict=True)]
    fixed = [fixed_horizon(t, c, kind="proportion") for t, c in pairs]
    sequential = [anytime_valid(t, c, kind="proportion", tightest_at=2 * n) for t, c in pairs]
    assert rejects(fixed).mean() > 0.95
    assert rejects(sequential).mean() > 0.9
    assert all(estimate.effect > 0 for estimate in fixed)


def test_a_planted_effect_on_a_mean_is_found() -> None:
    rng = np.random.default_rng(12)
    control = rng.poisson(2.0, 5_000).astype(float)
    treatment = rng.poisson(2.2, 5_000).astype(float)
    samples = Sample.of(list(treatment)), Sample.of(list(control))
    fixed = fixed_horizon(*samples, kind="mean")
    sequential = anytime_valid(*samples, kind="mean", tightest_at=10_000)
    assert fixed.low < 0.2 < fixed.high
    assert sequential.low < 0.2 < sequential.high
    assert fixed.significant
    assert sequential.significant


def test_an_a_a_test_rejects_at_about_alpha() -> None:
    rng = np.random.default_rng(13)
    sims, n = 2_000, 2_000
    successes = rng.binomial(n, 0.1, (sims, 2))
    rate = rejects(
        fixed_horizon(proportion(t, n), proportion(c, n), kind="proportion") for t, c in successes
    ).mean()
    assert abs(rate - ALPHA) < band(ALPHA, sims)


def test_an_a_a_test_of_a_mean_rejects_at_about_alpha() -> None:
    rng = np.random.default_rng(14)
    sims, n = 400, 200
    plays = rng.poisson(2.0, (sims, 2, n)).astype(float)
    rate = rejects(
        fixed_horizon(Sample.of(list(t)), Sample.of(list(c)), kind="mean") for t, c in plays
    ).mean()
    assert abs(rate - ALPHA) < band(ALPHA, sims)


def test_peeking_daily_inflates_the_fixed_test_but_not_the_confidence_sequence() -> None:
    rng = np.random.default_rng(15)
    sims, looks, daily = 1_000, 14, 300
    # Cumulative successes of each arm at each daily look, with no effect at all.
    successes = rng.binomial(daily, 0.1, (sims, looks, 2)).cumsum(axis=1)
    members = daily * np.arange(1, looks + 1)
    fixed_any, sequential_any, fixed_last = [], [], []
    for simulation in successes:
        pairs = [
            (proportion(t, n), proportion(c, n))
            for (t, c), n in zip(simulation, members, strict=True)
        ]
        fixed = rejects(fixed_horizon(t, c, kind="proportion") for t, c in pairs)
        sequential = rejects(
            anytime_valid(t, c, kind="proportion", tightest_at=2 * int(members[-1]))
            for t, c in pairs
        )
        fixed_any.append(fixed.any())
        sequential_any.append(sequential.any())
        fixed_last.append(fixed[-1])
    tolerance = band(ALPHA, sims)
    # Read once at the end, the fixed-horizon test holds its level...
    assert abs(np.mean(fixed_last) - ALPHA) < tolerance
    # ...read at every look it does not (about 3 times alpha with 14 looks)...
    assert np.mean(fixed_any) > ALPHA + tolerance
    # ...while the confidence sequence holds it however often it is read.
    assert np.mean(sequential_any) <= ALPHA + tolerance


def test_a_broken_split_is_flagged_and_a_fair_one_is_not() -> None:
    rng = np.random.default_rng(16)
    sims, members = 500, 100_000
    broken = rng.multinomial(members, [0.49, 0.51], sims)
    fair = rng.multinomial(members, [0.5, 0.5], sims)
    flagged = [sample_ratio(list(counts), [50, 50]).mismatch for counts in broken]
    false_alarms = [sample_ratio(list(counts), [50, 50]).mismatch for counts in fair]
    assert np.mean(flagged) > 0.99
    assert np.mean(false_alarms) < SRM_THRESHOLD + band(SRM_THRESHOLD, sims)
