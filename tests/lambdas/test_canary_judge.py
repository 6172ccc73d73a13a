"""The canary judge (lambda/canary_analysis/judge.py) against SciPy, brute force, Kayenta's own
reference values and seeded canaries."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from scipy import optimize, stats

JUDGE_PATH = Path(__file__).resolve().parents[2] / "lambda" / "canary_analysis" / "judge.py"


def _load_judge() -> ModuleType:
    name = "canary_analysis_judge_under_test"
    spec = importlib.util.spec_from_file_location(name, JUDGE_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


judge = _load_judge()
SETTINGS = judge.JudgeSettings()
TARGET_GROUPS = {
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/blue/0123456789abcdef": (
        "targetgroup/blue/0123456789abcdef"
    ),
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/green/fedcba9876543210": (
        "targetgroup/green/fedcba9876543210"
    ),
}


def default_config() -> dict:
    return judge.default_config(
        load_balancer_full_name="app/serving/50dc6c495c0c9188",
        target_groups=TARGET_GROUPS,
        model_name="recommender",
    )


def random_pair(rng: random.Random, *, max_size: int = 40) -> tuple[list[float], list[float]]:
    """Two samples of random sizes: small integers (many ties), or rounded Gaussians
    (a few ties) with a random shift between them."""
    m, n = rng.randint(1, max_size), rng.randint(1, max_size)
    if rng.random() < 0.5:
        top = rng.randint(1, 8)
        return [rng.randint(0, top) for _ in range(m)], [rng.randint(0, top) for _ in range(n)]
    shift, digits = rng.uniform(-1.5, 1.5), rng.choice([2, 6])
    return (
        [round(rng.gauss(shift, 1), digits) for _ in range(m)],
        [round(rng.gauss(0, 1), digits) for _ in range(n)],
    )


# --- Mann-Whitney p-values ----------------------------------------------------------------


def test_mann_whitney_matches_scipy_on_generated_samples():
    rng = random.Random(20_261_128)
    methods = Counter()
    for _ in range(600):
        if rng.random() < 0.3:
            # Small and distinct: the exact distribution, also with one large sample.
            canary = rng.sample(range(1_000), rng.randint(1, 8))
            baseline = rng.sample(range(1_000, 3_000), rng.randint(1, 60))
            canary = [value + rng.choice([0, 1_000]) for value in canary]
            if rng.random() < 0.5:
                canary, baseline = baseline, canary
        else:
            canary, baseline = random_pair(rng)
        expected = stats.mannwhitneyu(canary, baseline)

        result = judge.mann_whitney_u(canary, baseline)

        methods[result.method] += 1
        assert result.statistic == expected.statistic
        assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12, abs=1e-300)
    assert methods["exact"] >= 150
    assert methods["asymptotic"] >= 300


def test_mann_whitney_of_all_tied_values_is_1_as_in_scipy():
    assert judge.mann_whitney_u([3.0, 3.0], [3.0, 3.0, 3.0]).p_value == 1.0
    assert stats.mannwhitneyu([3.0, 3.0], [3.0, 3.0, 3.0]).pvalue == 1.0


@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 4), (2, 3), (3, 3), (4, 5), (5, 2)])
def test_exact_distribution_counts_every_ordering(m, n):
    # U of the first sample counts, over every choice of its ranks, the pairs it wins.
    brute = Counter(
        sum(rank - position for position, rank in enumerate(ranks))
        for ranks in itertools.combinations(range(m + n), m)
    )

    counts = judge._exact_u_counts(m, n)

    assert counts == [brute[u] for u in range(m * n + 1)]
    assert sum(counts) == math.comb(m + n, m)


def test_mann_whitney_needs_both_samples():
    with pytest.raises(ValueError, match="a value in each sample"):
        judge.mann_whitney_u([], [1.0])


# --- Hodges-Lehmann estimate and interval -------------------------------------------------


def inverted_test_interval(canary, baseline, confidence):
    """The interval as the shifts the asymptotic two-sided test (SciPy, tie and continuity
    corrected) does not reject: its ends are the pairwise differences where each one-sided
    p-value crosses alpha / 2, clamped to the range of the differences as Kayenta does."""
    tail = (1 - confidence) / 2
    steps = np.unique(np.subtract.outer(canary, baseline))
    if steps.size == 1:
        return steps[0], steps[0]
    shifts = (steps[:-1] + steps[1:]) / 2
    shifted = np.asarray(canary, float)[None, :] - shifts[:, None]
    candidates = np.broadcast_to(np.asarray(baseline, float), (shifts.size, len(baseline)))

    def p_values(alternative):
        return stats.mannwhitneyu(
            shifted, candidates, alternative=alternative, method="asymptotic", axis=1
        ).pvalue

    kept_above = np.flatnonzero(p_values("greater") >= tail)
    rejected_below = np.flatnonzero(p_values("less") < tail)
    lower = steps[kept_above[0]] if kept_above.size else steps[-1]
    upper = steps[rejected_below[0]] if rejected_below.size else steps[-1]
    return lower, upper


def test_interval_is_the_inverted_mann_whitney_test():
    rng = random.Random(7)
    for _ in range(400):
        canary, baseline = random_pair(rng, max_size=30)
        confidence = rng.choice([0.9, 0.95, 0.98, 0.99])

        shift = judge.location_shift(canary, baseline, confidence)

        # Decimal data make pairwise differences that are equal on paper and an ulp apart
        # in floating point; either of such twins may end the interval.
        expected = inverted_test_interval(canary, baseline, confidence)
        assert (shift.lower, shift.upper) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert shift.estimate == np.median(np.subtract.outer(canary, baseline))
        assert shift.lower <= shift.estimate <= shift.upper


def kayenta_wilcoxon_diff(mu, quantile, x, y):
    """Kayenta's MannWhitney.wilcoxonDiff (R's wdiff), written out with SciPy's ranks."""
    ranks = stats.rankdata(np.concatenate([np.asarray(x) - mu, y]))
    _, tie_sizes = np.unique(ranks, return_counts=True)
    m, n = len(x), len(y)
    dz = ranks[:m].sum() - m * (m + 1) / 2 - m * n / 2
    sigma = math.sqrt(
        m * n / 12 * ((m + n + 1) - (tie_sizes**3 - tie_sizes).sum() / ((m + n) * (m + n - 1)))
    )
    return (dz - np.sign(dz) * 0.5) / sigma - quantile


def kayenta_root(x, y, quantile):
    """Kayenta's findRoot: the clamps, then Brent with its absolute tolerance of 1e-4."""
    low, high = min(x) - max(y), max(x) - min(y)
    if kayenta_wilcoxon_diff(low, quantile, x, y) <= 0:
        return low
    if kayenta_wilcoxon_diff(high, quantile, x, y) >= 0:
        return high
    return optimize.brentq(kayenta_wilcoxon_diff, low, high, args=(quantile, x, y), xtol=1e-4)


def test_interval_and_estimate_agree_with_kayentas_root_search():
    rng = np.random.default_rng(11)
    z = stats.norm.ppf(1 - 0.02 / 2)
    for _ in range(60):
        canary = rng.normal(rng.uniform(-1, 1), 1, rng.integers(3, 25)).tolist()
        baseline = rng.normal(0, 1, rng.integers(3, 25)).tolist()

        shift = judge.location_shift(canary, baseline, 0.98)

        assert shift.lower == pytest.approx(kayenta_root(canary, baseline, z), abs=2e-4)
        assert shift.upper == pytest.approx(kayenta_root(canary, baseline, -z), abs=2e-4)
        # The median is a root of the estimate's equation: the function changes sign there.
        steps = np.unique(np.subtract.outer(canary, baseline))
        below = steps[steps < shift.estimate].max(initial=steps[0] - 1)
        above = steps[steps > shift.estimate].min(initial=steps[-1] + 1)
        before = (below + shift.estimate) / 2
        after = (shift.estimate + above) / 2
        assert kayenta_wilcoxon_diff(before, 0, canary, baseline) >= 0
        assert kayenta_wilcoxon_diff(after, 0, canary, baseline) <= 0


def test_kayentas_reference_values():
    # Kayenta's MannWhitneySuite, which ties out with R: CI (6, 39), estimate 22.5.
    shift = judge.location_shift([10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0], 0.95)

    assert (shift.estimate, shift.lower, shift.upper) == (22.5, 6.0, 39.0)


def test_constant_samples_shift_by_their_difference():
    shift = judge.location_shift([5.0, 5.0, 5.0], [2.0, 2.0], 0.98)

    assert (shift.estimate, shift.lower, shift.upper) == (3.0, 3.0, 3.0)


# --- outliers, ratio ----------------------------------------------------------------------


def test_percentile_is_numpys_linear_estimate():
    rng = random.Random(3)
    for _ in range(200):
        values = [rng.gauss(0, 1) for _ in range(rng.randint(1, 50))]
        percent = rng.choice([0, 1, 25, 50, 75, 99, 100, rng.uniform(0, 100)])

        assert judge.percentile(values, percent) == pytest.approx(np.percentile(values, percent))


def test_outliers_fall_outside_the_wider_of_the_iqr_and_1_99_percentile_fences():
    rng = np.random.default_rng(5)
    for _ in range(100):
        values = list(rng.normal(100, 10, rng.integers(5, 60)))
        values += list(rng.choice([-1, 1], 3) * rng.uniform(50, 400, 3) + 100)
        factor = float(rng.choice([1.5, 3.0]))
        q1, q3 = np.percentile(values, [25, 75])
        low = min(np.percentile(values, 1), q1 - factor * (q3 - q1))
        high = max(np.percentile(values, 99), q3 + factor * (q3 - q1))

        kept = judge.without_outliers(values, factor)

        assert kept == [value for value in values if low <= value <= high]


def test_far_outlier_is_removed_and_a_near_one_kept():
    values = [float(value) for value in range(1, 21)]

    assert judge.without_outliers([*values, 1_000.0], 3.0) == values
    # Q1 = 6, Q3 = 16: the upper fence is 16 + 3 x 10 = 46.
    assert judge.without_outliers([*values, 45.0], 3.0) == [*values, 45.0]
    assert judge.without_outliers([], 3.0) == []


def test_mean_ratio_is_undefined_for_a_zero_mean():
    assert judge.mean_ratio([3.0, 3.0], [1.0, 2.0]) == 2.0
    assert judge.mean_ratio([1.0], [0.0, 0.0]) is None
    assert judge.mean_ratio([0.0], [1.0]) is None


# --- classification -----------------------------------------------------------------------

BASELINE = [100.0, 102.0, 98.0, 101.0, 99.0, 103.0, 97.0, 100.5, 99.5, 101.5]


def analysis(**overrides) -> object:
    return judge.MetricAnalysis(**{"name": "latency", "group": "latency", **overrides})


def shifted(by: float) -> list[float]:
    return [value * by for value in BASELINE]


@pytest.mark.parametrize(
    ("direction", "factor", "expected"),
    [
        ("increase", 1.3, "High"),
        ("increase", 0.7, "Pass"),
        ("decrease", 0.7, "Low"),
        ("decrease", 1.3, "Pass"),
        ("either", 1.3, "High"),
        ("either", 0.7, "Low"),
        ("either", 1.0, "Pass"),
    ],
)
def test_direction_decides_which_change_fails(direction, factor, expected):
    result = judge.classify(analysis(direction=direction), shifted(factor), BASELINE, SETTINGS)

    assert result.classification == expected
    assert result.critical is False


def test_a_result_carries_the_test_statistics():
    canary = shifted(1.3)

    result = judge.classify(analysis(direction="increase"), canary, BASELINE, SETTINGS)

    shift = judge.location_shift(canary, BASELINE, 0.98)
    assert (result.estimate, result.ci_lower, result.ci_upper) == (
        shift.estimate,
        shift.lower,
        shift.upper,
    )
    assert result.p_value == pytest.approx(stats.mannwhitneyu(canary, BASELINE).pvalue)
    assert result.mean_ratio == pytest.approx(1.3)
    assert result.reason == "latency was classified as High"
    assert (result.canary.count, result.baseline.count) == (10, 10)
    assert json.loads(json.dumps(result.as_log()))["confidence_interval"] == [
        shift.lower,
        shift.upper,
    ]


def test_tolerance_is_a_fraction_of_the_estimate_the_interval_must_clear():
    canary = shifted(1.03)
    shift = judge.location_shift(canary, BASELINE, 0.98)
    clearing = shift.lower / abs(shift.estimate)
    assert 0 < clearing < 1

    def classify(tolerance):
        settings = judge.JudgeSettings(tolerance=tolerance)
        return judge.classify(analysis(direction="increase"), canary, BASELINE, settings)

    assert classify(clearing * 0.999).classification == "High"
    assert classify(clearing * 1.001).classification == "Pass"


def test_an_allowed_increase_lets_a_significant_but_small_change_pass():
    canary = shifted(1.1)

    def classify(allowed):
        metric = analysis(direction="increase", allowed_increase=allowed)
        return judge.classify(metric, canary, BASELINE, SETTINGS).classification

    assert classify(1.0) == "High"
    assert classify(1.09) == "High"
    assert classify(1.11) == "Pass"


def test_an_allowed_decrease_lets_a_significant_but_small_drop_pass():
    canary = shifted(0.9)

    def classify(allowed):
        metric = analysis(direction="decrease", allowed_decrease=allowed)
        return judge.classify(metric, canary, BASELINE, SETTINGS).classification

    assert classify(1.0) == "Low"
    assert classify(0.91) == "Low"
    assert classify(0.89) == "Pass"


def test_an_undefined_ratio_skips_the_effect_size_check():
    errors = [0.0] * 10
    metric = analysis(direction="increase", allowed_increase=50.0)

    result = judge.classify(metric, [0.02, 0.03, 0.025, 0.04] * 3, errors, SETTINGS)

    assert (result.classification, result.mean_ratio) == ("High", None)


@pytest.mark.parametrize(
    ("critical_increase", "critical"),
    [(1.0, True), (1.29, True), (1.31, False)],
)
def test_a_critical_metric_fails_critically_beyond_its_critical_effect(critical_increase, critical):
    metric = analysis(direction="increase", critical=True, critical_increase=critical_increase)

    result = judge.classify(metric, shifted(1.3), BASELINE, SETTINGS)

    assert result.classification == "High"
    assert result.critical is critical
    assert result.reason == (
        "The metric latency was classified as High (Critical)"
        if critical
        else "latency was classified as High"
    )


def test_a_critical_drop_needs_the_critical_decrease():
    metric = analysis(direction="decrease", critical=True, critical_decrease=0.6)

    result = judge.classify(metric, shifted(0.7), BASELINE, SETTINGS)

    assert (result.classification, result.critical) == ("Low", False)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ("Nodata", False)),
        ({"critical": True}, ("Nodata", True)),
        ({"must_have_data": True}, ("NodataFailMetric", False)),
        ({"must_have_data": True, "critical": True}, ("Nodata", True)),
    ],
)
@pytest.mark.parametrize(("canary", "min_samples"), [([], 1), ([1.0, 2.0], 3)])
def test_missing_or_too_few_samples_are_no_data(options, expected, canary, min_samples):
    settings = judge.JudgeSettings(min_samples=min_samples)

    result = judge.classify(analysis(**options), canary, BASELINE, settings)

    assert (result.classification, result.critical) == expected
    assert result.reason.startswith("Missing data for latency")
    assert result.p_value is None


def test_nans_are_removed_before_counting():
    canary = [math.nan, 1.0, math.nan, 2.0]
    settings = judge.JudgeSettings(min_samples=3)

    result = judge.classify(analysis(), canary, BASELINE, settings)

    assert (result.classification, result.canary.count) == ("Nodata", 2)


def test_outliers_are_removed_only_when_asked():
    canary = [*BASELINE, 1_000.0]
    kept = judge.classify(analysis(), canary, BASELINE, SETTINGS)
    removed = judge.classify(analysis(remove_outliers=True), canary, BASELINE, SETTINGS)

    assert (kept.canary.count, removed.canary.count) == (11, 10)
    assert removed.reason == "The Canary and Baseline data are identical"


def test_identical_or_single_valued_samples_pass():
    identical = judge.classify(analysis(), list(reversed(BASELINE)), BASELINE, SETTINGS)
    single = judge.classify(analysis(), [4.0, 4.0], [4.0, 4.0, 4.0], SETTINGS)

    assert (identical.classification, identical.reason) == (
        "Pass",
        "The Canary and Baseline data are identical",
    )
    assert (single.classification, single.reason) == ("Pass", None)


def test_constant_but_different_samples_are_a_change():
    result = judge.classify(analysis(direction="increase"), [3.0] * 5, [1.0] * 5, SETTINGS)

    assert (result.classification, result.estimate) == ("High", 2.0)


# --- scoring ------------------------------------------------------------------------------


def labelled(name: str, group: str, classification: str, *, critical: bool = False) -> object:
    summary = judge.SampleSummary.of([])
    reason = None if classification == "Pass" else f"{name} is {classification}"
    return judge.MetricResult(name, group, classification, reason, critical, summary, summary)


def test_group_scores_count_no_data_fails_but_not_no_data():
    results = [
        labelled("a", "g", "Pass"),
        labelled("b", "g", "High"),
        labelled("c", "g", "NodataFailMetric"),
        labelled("d", "g", "Nodata"),
        labelled("e", "h", "Pass"),
    ]
    settings = judge.JudgeSettings(group_weights={"g": 50, "h": 50})

    report = judge.score(results, settings)

    groups = {group.name: group for group in report.groups}
    assert groups["g"].score == pytest.approx(100 / 3)
    assert groups["g"].counts == {"Pass": 1, "High": 1, "NodataFailMetric": 1, "Nodata": 1}
    assert report.score == round(50 / 3 + 50, 2)


def test_a_critical_failure_scores_0():
    results = [labelled("a", "g", "Pass"), labelled("b", "g", "High", critical=True)]

    report = judge.score(results, SETTINGS)

    assert (report.score, report.classification) == (0.0, "Fail")
    assert report.reason == "Canary Failed: b is High"


@pytest.mark.parametrize(("nodata", "expected"), [(1, 66.67), (2, 0.0)])
def test_half_the_metrics_without_data_scores_0(nodata, expected):
    # Four metrics: `nodata` without data, one High, the rest Pass.
    results = [labelled(f"n{index}", "g", "Nodata") for index in range(nodata)]
    results += [labelled(f"p{index}", "g", "Pass") for index in range(3 - nodata)]
    results += [labelled("h", "g", "High")]

    report = judge.score(results, SETTINGS)

    assert report.score == expected
    assert (report.reason is None) is (expected > 0)


def test_groups_without_a_weight_share_the_rest():
    results = [
        labelled("a", "weighted", "High"),
        labelled("b", "left1", "Pass"),
        labelled("c", "left2", "High"),
    ]
    settings = judge.JudgeSettings(group_weights={"weighted": 60})

    assert judge.score(results, settings).score == 20.0


def test_weights_scale_to_100_over_the_groups_judged():
    results = [labelled("a", "latency", "Pass"), labelled("b", "errors", "High")]
    settings = judge.JudgeSettings(group_weights={"latency": 40, "errors": 40, "quality": 20})

    assert judge.score(results, settings).score == 50.0


def test_a_group_without_any_data_counts_as_100():
    results = [labelled(f"p{index}", "g", "Pass") for index in range(3)]
    results += [labelled("n", "empty", "Nodata")]
    settings = judge.JudgeSettings(group_weights={"g": 50, "empty": 50})

    assert judge.score(results, settings).score == 100.0


def test_the_summary_rounds_half_up():
    assert judge._round_half_up(0.125) == 0.13
    assert judge._round_half_up(66.665) == 66.67
    assert judge._round_half_up(2 / 3 * 100) == 66.67


@pytest.mark.parametrize(
    ("passes", "verdict"),
    [(4, "Pass"), (3, "Pass"), (2, "Marginal"), (1, "Fail")],
)
def test_thresholds_make_the_verdict(passes, verdict):
    results = [labelled(f"m{index}", "g", "Pass") for index in range(passes)]
    results += [labelled(f"f{index}", "g", "High") for index in range(4 - passes)]

    report = judge.score(results, SETTINGS)

    assert report.score == passes * 25
    assert report.classification == verdict


@pytest.mark.parametrize(
    ("verdict", "marginal_is_failure", "passed"),
    [
        ("Pass", True, True),
        ("Marginal", True, False),
        ("Marginal", False, True),
        ("Fail", False, False),
    ],
)
def test_marginal_counts_as_failure_when_asked(verdict, marginal_is_failure, passed):
    report = judge.Report(60.0, verdict, None, (), ())

    assert report.passed(marginal_is_failure=marginal_is_failure) is passed


# --- seeded canaries with the default configuration ---------------------------------------


def minutes_of_traffic(rng, minutes, *, latency=1.0, errors=1.0, score=0.0):
    """Per-minute samples of each default metric for one side: p99 latencies around 250 ms
    (ALB) and 180 ms (app) with 4 % noise, a 5xx and error rate around 0.5 % from
    binomial counts of 2,000 requests a minute, and a mean score around 0.62."""

    def rate(p):
        return rng.binomial(2_000, min(p * errors, 1.0), minutes) / 2_000

    return {
        "alb_latency_p99": 0.25 * latency * rng.lognormal(0, 0.04, minutes),
        "alb_5xx_rate": rate(0.005),
        "app_latency_p99": 0.18 * latency * rng.lognormal(0, 0.04, minutes),
        "app_error_rate": rate(0.005),
        "app_score_mean": rng.normal(0.62 + score, 0.01, minutes),
    }


def judge_canary(seed, minutes=10, **canary_effects):
    config = judge.parse_config(default_config())
    rng = np.random.default_rng(seed)
    canary = minutes_of_traffic(rng, minutes, **canary_effects)
    baseline = minutes_of_traffic(rng, minutes)
    observations = [
        (metric.analysis, list(canary[metric.analysis.name]), list(baseline[metric.analysis.name]))
        for metric in config.metrics
    ]
    return judge.judge(observations, config.settings), config


@pytest.mark.parametrize("seed", range(5))
def test_an_equal_canary_passes(seed):
    report, config = judge_canary(seed)

    assert report.classification == "Pass"
    assert report.passed(marginal_is_failure=config.marginal_is_failure)


@pytest.mark.parametrize("seed", range(5))
def test_a_slightly_slower_noisy_canary_passes(seed):
    report, _ = judge_canary(seed, latency=1.02)

    assert report.classification == "Pass"


@pytest.mark.parametrize("seed", range(5))
def test_a_30_percent_slower_canary_fails(seed):
    report, config = judge_canary(seed, latency=1.3)

    results = {result.name: result.classification for result in report.results}
    assert results["alb_latency_p99"] == results["app_latency_p99"] == "High"
    assert {group.name: group.score for group in report.groups}["latency"] == 0
    assert (report.score, report.classification) == (60.0, "Marginal")
    assert not report.passed(marginal_is_failure=config.marginal_is_failure)


@pytest.mark.parametrize("seed", range(5))
def test_a_canary_with_three_times_the_5xx_fails_critically(seed):
    report, config = judge_canary(seed, errors=3.0)

    results = {result.name: result for result in report.results}
    assert results["alb_5xx_rate"].classification == "High"
    assert results["alb_5xx_rate"].critical
    assert (report.score, report.classification) == (0.0, "Fail")
    assert report.reason.startswith("Canary Failed: The metric alb_5xx_rate")
    assert not report.passed(marginal_is_failure=config.marginal_is_failure)


def test_too_few_samples_is_no_data_and_fails_safe():
    report, config = judge_canary(1, minutes=4)

    assert config.settings.min_samples == 5
    assert {result.classification for result in report.results} == {"Nodata"}
    assert (report.score, report.classification) == (0.0, "Fail")


# --- configuration ------------------------------------------------------------------------


def test_the_default_config_parses_and_is_json():
    raw = default_config()

    config = judge.parse_config(json.loads(json.dumps(raw)))

    assert [metric.analysis.name for metric in config.metrics] == [
        "alb_latency_p99",
        "alb_5xx_rate",
        "app_latency_p99",
        "app_error_rate",
        "app_score_mean",
    ]
    five_xx, errors, score = config.metrics[1], config.metrics[3], config.metrics[4]
    assert five_xx.analysis.critical
    assert five_xx.query == judge.MetricQuery(
        source="alb",
        metric_name="HTTPCode_Target_5XX_Count",
        statistic="Sum",
        denominator=judge.Denominator("RequestCount", "Sum"),
    )
    assert errors.query == judge.MetricQuery(
        source="app",
        metric_name="Error",
        statistic="Sum",
        denominator=judge.Denominator("Latency", "SampleCount"),
    )
    assert (score.query.metric_name, score.analysis.direction) == ("TopScore", "either")
    assert config.settings == judge.JudgeSettings(
        min_samples=5, group_weights={"latency": 40.0, "errors": 40.0, "quality": 20.0}
    )
    assert (config.analysis_minutes, config.max_wait_minutes, config.callback_delay_seconds) == (
        10,
        30,
        60,
    )
    assert config.marginal_is_failure
    assert config.app_namespace == "MLPlatform/Serving"


def test_optional_keys_default_to_what_the_default_config_spells_out():
    full = default_config()
    required = ("load_balancer_full_name", "target_groups", "model_name", "metrics")
    minimal = {key: full[key] for key in required}
    minimal["group_weights"] = full["group_weights"]
    minimal["metrics"] = [
        {key: metric[key] for key in ("name", "source", "metric_name", "statistic", "group")}
        | ({"direction": "increase"} if metric["direction"] == "increase" else {})
        | ({"critical": True} if metric["critical"] else {})
        | ({"denominator": metric["denominator"]} if metric["denominator"] else {})
        for metric in full["metrics"]
    ]

    assert judge.parse_config(minimal) == judge.parse_config(full)


def with_changes(*changes):
    config = default_config()
    for path, value in changes:
        *parents, key = path
        target = config
        for parent in parents:
            target = target[parent]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    return config


DELETE = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ([(("model_name",), DELETE)], "CANARY_CONFIG.model_name is required"),
        ([(("modle_name",), "x")], "CANARY_CONFIG has unknown keys: modle_name"),
        ([(("metrics", 0, "critcal"), True)], r"metrics\[0\] has unknown keys: critcal"),
        ([(("load_balancer_full_name",), "my-alb")], "must be app/<name>/<id>"),
        ([(("analysis_minutes",), True)], "analysis_minutes must be a whole number"),
        ([(("analysis_minutes",), 29)], r"max_wait_minutes \(30\) must be at least"),
        ([(("min_samples",), 0)], "min_samples must be a whole number from 1"),
        ([(("confidence",), 1)], r"confidence must be a number in \(0, 1\)"),
        ([(("tolerance",), "0.25")], "tolerance must be a number"),
        ([(("marginal_threshold",), 80)], r"marginal_threshold \(80\) must not be above"),
        ([(("marginal_is_failure",), "yes")], "marginal_is_failure must be true or false"),
        ([(("metrics",), [])], "metrics must be a non-empty list"),
        ([(("metrics", 1, "name"), "alb_latency_p99")], "duplicate names: alb_latency_p99"),
        ([(("metrics", 0, "direction"), "up")], "direction must be one of increase"),
        ([(("metrics", 0, "statistic"), "p999x")], "statistic must be one of Average"),
        ([(("metrics", 0, "statistic"), "Median")], "statistic must be one of Average"),
        ([(("metrics", 0, "source"), "prometheus")], "source must be one of alb, app"),
        ([(("metrics", 0, "allowed_increase"), 0)], r"allowed_increase must be a number in \(0"),
        (
            [(("metrics", 0, "denominator"), {"metric_name": "RequestCount", "statistic": "Sum"})],
            r"metrics\[0\]: a metric with a denominator must use the Sum statistic",
        ),
        (
            [(("metrics", 1, "denominator", "statistic"), DELETE)],
            r"metrics\[1\].denominator.statistic is required",
        ),
        ([(("metrics", 1, "denominator"), "RequestCount")], "denominator must be a JSON object"),
        ([(("target_groups",), {})], "must map the two target group ARNs"),
        (
            [(("target_groups", next(iter(TARGET_GROUPS))), "targetgroup/other/1")],
            "must be that ARN's full name",
        ),
        ([(("group_weights", "latency"), 50)], "group_weights must add up to 100"),
        ([(("group_weights", "speed"), 0)], "names 'speed', which no metric is in"),
        ([(("group_weights", "quality"), -1)], "must be a number >= 0"),
    ],
)
def test_a_malformed_config_is_refused_naming_the_key(changes, message):
    with pytest.raises(judge.ConfigError, match=message):
        judge.parse_config(with_changes(*changes))


def test_weights_may_leave_a_share_to_unweighted_groups():
    config = judge.parse_config(with_changes((("group_weights",), {"latency": 50})))

    assert config.settings.group_weights == {"latency": 50.0}


def test_a_percentile_statistic_is_accepted():
    config = judge.parse_config(with_changes((("metrics", 0, "statistic"), "p99.9")))

    assert config.metrics[0].query.statistic == "p99.9"
