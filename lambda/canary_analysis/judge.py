"""Automated canary analysis: Netflix Kayenta's NetflixACAJudge in plain Python (stdlib only).

Per metric, the canary's samples are compared with the baseline's:

1. NaNs are removed; outliers are kept unless the metric asks for their removal (Kayenta's
   IQR detector with reduced sensitivity: a value is an outlier outside
   [min(p1, Q1 - f IQR), max(p99, Q3 + f IQR)], f = 3.0 by default, R-7 percentiles).
2. Fewer than ``min_samples`` values on either side is no data (Kayenta's rule with
   ``min_samples = 1``): ``Nodata``, or ``NodataFailMetric`` for a metric that must have data
   and is not critical. Identical samples, or a single value shared by both, pass.
3. The location shift canary - baseline is estimated with Hodges-Lehmann and given the
   Mann-Whitney confidence interval at ``confidence`` (0.98 by default), the normal
   approximation with tie and continuity corrections that Kayenta (after R's
   ``wilcox.test(conf.int = TRUE, exact = FALSE)``) inverts. The metric is ``High`` when the
   direction is ``increase`` or ``either``, the interval's lower end is above
   ``tolerance`` x |estimate| (0.25 by default) and the mean ratio canary/baseline is at least
   ``allowed_increase``; ``Low`` mirrors it with the upper end below -tolerance x |estimate|
   and a ratio at most ``allowed_decrease``. An undefined ratio (a zero mean) skips the ratio
   check. Anything else passes.
4. A critical metric that is ``High`` with a ratio at least ``critical_increase`` (``Low`` and
   at most ``critical_decrease``), or that has no data, is a critical failure.

Scores: a group scores passes / (passes + highs + lows + nodata-fails) x 100 (a group whose
metrics all lack data counts as 100 in the summary, as in Kayenta). The summary is the sum
of group scores times their weights / 100, rounded half-up to 2 decimals; groups without a
configured weight share what the weights leave of 100. It is 0 when a critical metric fails
or when at least half of the metrics have no data. Verdict: ``Pass`` at or above the pass
threshold (75), ``Marginal`` at or above the marginal threshold (50), else ``Fail``.

Where this differs from Kayenta, and why:

- Kayenta finds the interval's ends and the estimate with a Brent root search (absolute
  tolerance 1e-4) on the step function of the shift. This computes the steps exactly: each
  end is the pairwise difference at which the function changes sign, which is where Brent
  converges. The estimate is the Hodges-Lehmann median of the pairwise differences, which is
  a root of the same function; where that function is zero over a stretch, Brent returns
  some point of it and this returns the median.
- Kayenta adds Gaussian noise when both samples are constant, to keep its root search off
  a point where every value ties. The exact steps need none: the shift is the one pairwise
  difference, and the interval is that point.
- ``min_samples`` generalises Kayenta's empty-sample rule, because the interval of a tiny
  sample is clamped to the range of the pairwise differences and flags any separation.
- Weights are scaled to add up to 100 over the groups judged. With every configured group
  judged (the only case Kayenta has) that changes nothing, since the configuration's
  weights must add up to 100; when the hook leaves a group out (app metrics skipped for
  equal model versions) a fully passing canary still scores 100.
- Only the mean-ratio effect size is offered (Kayenta also has CLES).

The Mann-Whitney p-value is reported alongside (two-sided, SciPy's ``mannwhitneyu``
semantics: exact distribution when a sample has at most 8 values and nothing ties, else the
normal approximation with tie and continuity corrections). The decision uses the interval,
as Kayenta does; the p-value is for the logs.

The configuration (the ``CANARY_CONFIG`` JSON the hook reads) is parsed and validated by
``parse_config``; ``default_config`` renders the platform's default with every key spelled out.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

PASS, HIGH, LOW, NODATA, NODATA_FAIL = "Pass", "High", "Low", "Nodata", "NodataFailMetric"
VERDICT_PASS, VERDICT_MARGINAL, VERDICT_FAIL = "Pass", "Marginal", "Fail"
DIRECTIONS = ("increase", "decrease", "either")
SOURCES = ("alb", "app")
STATISTICS = ("Average", "Sum", "Minimum", "Maximum", "SampleCount")
# Kayenta's share of metrics without data at which the canary scores 0.
NODATA_PERCENT_LIMIT = 50.0
# SciPy's `mannwhitneyu(method="auto")` uses the exact distribution up to this sample size.
EXACT_MAX_SIZE = 8


class ConfigError(ValueError):
    """The canary configuration is malformed; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class MetricAnalysis:
    """How one metric is judged: Kayenta's per-metric ``canary`` analysis settings."""

    name: str
    group: str
    direction: str = "either"
    critical: bool = False
    must_have_data: bool = False
    allowed_increase: float = 1.0
    allowed_decrease: float = 1.0
    critical_increase: float = 1.0
    critical_decrease: float = 1.0
    remove_outliers: bool = False
    outlier_factor: float = 3.0


@dataclass(frozen=True)
class Denominator:
    metric_name: str
    statistic: str


@dataclass(frozen=True, kw_only=True)
class MetricQuery:
    """Where one metric's per-minute samples come from.

    ``alb``: the AWS/ApplicationELB metric of each target group (dimensions LoadBalancer and
    TargetGroup). ``app``: the serving app's metric of each model version (dimensions
    ModelName and ModelVersion). A ``denominator`` (another metric of the same source and
    dimensions) turns a count into a rate: each minute's ``Sum`` is divided by the
    denominator's value that minute, so that a canary with a tenth of the traffic is
    compared by rate, not count. Counts are only published in minutes that have some, so
    a minute with a denominator but no count counts as 0.
    """

    source: str
    metric_name: str
    statistic: str
    denominator: Denominator | None = None


@dataclass(frozen=True, kw_only=True)
class MetricConfig:
    analysis: MetricAnalysis
    query: MetricQuery


@dataclass(frozen=True, kw_only=True)
class JudgeSettings:
    confidence: float = 0.98
    tolerance: float = 0.25
    min_samples: int = 1
    pass_threshold: float = 75.0
    marginal_threshold: float = 50.0
    group_weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CanaryConfig:
    load_balancer_full_name: str
    target_groups: Mapping[str, str]
    app_namespace: str
    model_name: str
    analysis_minutes: int
    max_wait_minutes: int
    callback_delay_seconds: int
    marginal_is_failure: bool
    metrics: tuple[MetricConfig, ...]
    settings: JudgeSettings


@dataclass(frozen=True)
class MannWhitney:
    """U of the canary sample and the two-sided p-value; ``method`` is exact or asymptotic."""

    statistic: float
    p_value: float
    method: str


@dataclass(frozen=True)
class LocationShift:
    """Hodges-Lehmann estimate of canary - baseline and its confidence interval."""

    estimate: float
    lower: float
    upper: float


@dataclass(frozen=True)
class SampleSummary:
    count: int
    mean: float | None
    minimum: float | None
    maximum: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> SampleSummary:
        if not values:
            return cls(0, None, None, None)
        return cls(len(values), statistics.fmean(values), min(values), max(values))


@dataclass(frozen=True)
class MetricResult:
    name: str
    group: str
    classification: str
    reason: str | None
    critical: bool
    canary: SampleSummary
    baseline: SampleSummary
    p_value: float | None = None
    estimate: float | None = None
    ci_lower: float | None = None
    ci_upper: float | None = None
    mean_ratio: float | None = None

    def as_log(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "group": self.group,
            "classification": self.classification,
            "reason": self.reason,
            "critical": self.critical,
            "p_value": self.p_value,
            "hodges_lehmann_estimate": self.estimate,
            "confidence_interval": [self.ci_lower, self.ci_upper],
            "mean_ratio": self.mean_ratio,
            "canary": vars(self.canary),
            "baseline": vars(self.baseline),
        }


@dataclass(frozen=True)
class GroupScore:
    name: str
    score: float
    no_data: bool
    counts: Mapping[str, int]


@dataclass(frozen=True)
class Report:
    score: float
    classification: str
    reason: str | None
    groups: tuple[GroupScore, ...]
    results: tuple[MetricResult, ...]

    def passed(self, *, marginal_is_failure: bool) -> bool:
        if self.classification == VERDICT_MARGINAL:
            return not marginal_is_failure
        return self.classification == VERDICT_PASS


# --- statistics ---------------------------------------------------------------------------


def _average_ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks with ties given their average rank, and the size of each tie group."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    tie_sizes = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        tie_sizes.append(end - start + 1)
        start = end + 1
    return ranks, tie_sizes


def _normal_sigma(m: int, n: int, tie_term: float) -> float:
    """Standard deviation of U under the null hypothesis, corrected for ties."""
    total = m + n
    return math.sqrt(m * n / 12 * ((total + 1) - tie_term / (total * (total - 1))))


def _exact_u_counts(m: int, n: int) -> list[int]:
    """How many of the C(m + n, m) orderings give each U = 0 .. m n: the coefficients of the
    Gaussian binomial, built as the product of (1 - q^(n+i)) / (1 - q^i) for i = 1 .. m."""
    size = m * n
    counts = [1] + [0] * size
    for i in range(1, m + 1):
        for u in range(size, n + i - 1, -1):
            counts[u] -= counts[u - n - i]
        for u in range(i, size + 1):
            counts[u] += counts[u - i]
    return counts


def mann_whitney_u(canary: Sequence[float], baseline: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of the canary against the baseline, matching
    ``scipy.stats.mannwhitneyu(canary, baseline)`` with its defaults."""
    m, n = len(canary), len(baseline)
    if not m or not n:
        raise ValueError("the Mann-Whitney test needs a value in each sample")
    ranks, tie_sizes = _average_ranks([*canary, *baseline])
    u_canary = sum(ranks[:m]) - m * (m + 1) / 2
    u = max(u_canary, m * n - u_canary)
    has_ties = any(size > 1 for size in tie_sizes)
    if min(m, n) <= EXACT_MAX_SIZE and not has_ties:
        counts = _exact_u_counts(min(m, n), max(m, n))
        # Without ties U is a whole number; the upper tail includes U itself.
        tail = sum(counts[round(u) :])
        return MannWhitney(u_canary, min(1.0, 2 * tail / math.comb(m + n, m)), "exact")
    sigma = _normal_sigma(m, n, sum(size**3 - size for size in tie_sizes))
    if sigma == 0:
        return MannWhitney(u_canary, 1.0, "asymptotic")
    z = (u - m * n / 2 - 0.5) / sigma
    return MannWhitney(u_canary, min(1.0, math.erfc(z / math.sqrt(2))), "asymptotic")


def location_shift(
    canary: Sequence[float], baseline: Sequence[float], confidence: float
) -> LocationShift:
    """Hodges-Lehmann estimate of canary - baseline and the asymptotic Mann-Whitney
    confidence interval (tie and continuity corrected) that Kayenta computes."""
    if not canary or not baseline:
        raise ValueError("a location shift needs a value in each sample")
    differences = sorted(c - b for c in canary for b in baseline)
    estimate = statistics.median(differences)
    steps = sorted(set(differences))
    if len(steps) == 1:
        return LocationShift(estimate, steps[0], steps[0])
    # Between two pairwise differences nothing ties across the samples, so the standard
    # deviation there only knows the ties within each sample.
    tie_term = sum(
        size**3 - size for sample in (canary, baseline) for size in Counter(sample).values()
    )
    sigma = _normal_sigma(len(canary), len(baseline), tie_term)
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    lower = _sign_change(differences, steps, sigma, z)
    upper = _sign_change(differences, steps, sigma, -z)
    return LocationShift(estimate, lower, upper)


def _sign_change(
    differences: Sequence[float], steps: Sequence[float], sigma: float, quantile: float
) -> float:
    """Where Kayenta's ``wilcoxonDiff(mu) - quantile`` turns from positive to not positive.

    For a shift mu strictly between steps[k] and steps[k + 1], U counts the pairwise
    differences above mu; the standardised statistic (U - m n / 2 minus half its sign, over
    sigma) only falls as mu grows, so a binary search over the steps finds the change.
    Like Kayenta, the answer is clamped to [steps[0], steps[-1]].
    """
    half = len(differences) / 2

    def positive(k: int) -> bool:
        dz = len(differences) - bisect_right(differences, steps[k]) - half
        continuity = 0.5 if dz > 0 else -0.5 if dz < 0 else 0.0
        return (dz - continuity) / sigma - quantile > 0

    low, high = 0, len(steps) - 1
    while low < high:
        middle = (low + high) // 2
        if positive(middle):
            low = middle + 1
        else:
            high = middle
    return steps[low]


def percentile(values: Sequence[float], percent: float) -> float:
    """The R-7 estimate (linear interpolation, NumPy's default) used by Kayenta."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def without_outliers(values: Sequence[float], factor: float) -> list[float]:
    """Kayenta's IQR detector with reduced sensitivity."""
    if not values:
        return []
    q1, q3 = percentile(values, 25), percentile(values, 75)
    spread = q3 - q1
    low_fence = min(percentile(values, 1), q1 - factor * spread)
    high_fence = max(percentile(values, 99), q3 + factor * spread)
    return [value for value in values if low_fence <= value <= high_fence]


def mean_ratio(canary: Sequence[float], baseline: Sequence[float]) -> float | None:
    """Mean of the canary over mean of the baseline; None when either mean is 0."""
    canary_mean, baseline_mean = statistics.fmean(canary), statistics.fmean(baseline)
    if canary_mean == 0 or baseline_mean == 0:
        return None
    return canary_mean / baseline_mean


# --- classification and scoring -----------------------------------------------------------


def _prepare(values: Sequence[float], analysis: MetricAnalysis) -> list[float]:
    present = [float(value) for value in values if not math.isnan(value)]
    if analysis.remove_outliers:
        return without_outliers(present, analysis.outlier_factor)
    return present


def classify(
    analysis: MetricAnalysis,
    canary_values: Sequence[float],
    baseline_values: Sequence[float],
    settings: JudgeSettings,
) -> MetricResult:
    """One metric's classification, as Kayenta's MannWhitneyClassifier makes it."""
    canary = _prepare(canary_values, analysis)
    baseline = _prepare(baseline_values, analysis)
    summaries = {"canary": SampleSummary.of(canary), "baseline": SampleSummary.of(baseline)}

    def result(classification: str, reason: str | None, critical: bool, **stats) -> MetricResult:
        return MetricResult(
            analysis.name, analysis.group, classification, reason, critical, **summaries, **stats
        )

    if min(len(canary), len(baseline)) < max(settings.min_samples, 1):
        reason = (
            f"Missing data for {analysis.name}: {len(canary)} canary and {len(baseline)} "
            f"baseline samples, need {settings.min_samples}"
        )
        if analysis.must_have_data and not analysis.critical:
            return result(NODATA_FAIL, reason, critical=False)
        return result(NODATA, reason, critical=analysis.critical)
    if sorted(canary) == sorted(baseline):
        return result(PASS, "The Canary and Baseline data are identical", critical=False)
    if len({*canary, *baseline}) == 1:
        return result(PASS, None, critical=False)

    shift = location_shift(canary, baseline, settings.confidence)
    ratio = mean_ratio(canary, baseline)
    bound = settings.tolerance * abs(shift.estimate)
    stats = {
        "p_value": mann_whitney_u(canary, baseline).p_value,
        "estimate": shift.estimate,
        "ci_lower": shift.lower,
        "ci_upper": shift.upper,
        "mean_ratio": ratio,
    }
    high = (
        analysis.direction in ("increase", "either")
        and shift.lower > bound
        and (ratio is None or ratio >= analysis.allowed_increase)
    )
    low = (
        analysis.direction in ("decrease", "either")
        and shift.upper < -bound
        and (ratio is None or ratio <= analysis.allowed_decrease)
    )
    if not (high or low):
        return result(PASS, None, critical=False, **stats)
    label = HIGH if high else LOW
    critical = analysis.critical and (
        ratio is None
        or (ratio >= analysis.critical_increase if high else ratio <= analysis.critical_decrease)
    )
    reason = (
        f"The metric {analysis.name} was classified as {label} (Critical)"
        if critical
        else f"{analysis.name} was classified as {label}"
    )
    return result(label, reason, critical=critical, **stats)


def _group_score(name: str, results: Sequence[MetricResult]) -> GroupScore:
    counts = Counter(result.classification for result in results)
    judged = counts[PASS] + counts[HIGH] + counts[LOW] + counts[NODATA_FAIL]
    score = counts[PASS] / judged * 100 if judged else 0.0
    return GroupScore(name, score, judged == 0, dict(counts))


def _effective_weights(groups: Sequence[str], configured: Mapping[str, float]) -> dict[str, float]:
    """Kayenta's weights (unweighted groups share the rest of 100), scaled to add up to 100."""
    unweighted = [group for group in groups if group not in configured]
    share = (100 - sum(configured.values())) / len(unweighted) if unweighted else 0.0
    weights = {group: configured.get(group, share) for group in groups}
    total = sum(weights.values())
    return {group: weight * 100 / total if total else 0.0 for group, weight in weights.items()}


def _round_half_up(value: float) -> float:
    return float(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def score(results: Sequence[MetricResult], settings: JudgeSettings) -> Report:
    """The summary score and verdict of classified metrics (Kayenta's WeightedSumScorer and
    ThresholdScoreClassifier)."""
    by_group: dict[str, list[MetricResult]] = {}
    for result in results:
        by_group.setdefault(result.group, []).append(result)
    groups = tuple(_group_score(name, members) for name, members in by_group.items())

    critical = [result for result in results if result.critical and result.classification != PASS]
    nodata = sum(result.classification == NODATA for result in results)
    if critical:
        summary, reason = 0.0, f"Canary Failed: {critical[0].reason}"
    elif not results or nodata / len(results) * 100 >= NODATA_PERCENT_LIMIT:
        summary = 0.0
        reason = f"Canary Failed: {NODATA_PERCENT_LIMIT:g}% or more metrics returned NODATA"
    else:
        weights = _effective_weights([group.name for group in groups], settings.group_weights)
        summary = _round_half_up(
            sum((100.0 if g.no_data else g.score) * weights[g.name] / 100 for g in groups)
        )
        reason = None
    if summary >= settings.pass_threshold:
        verdict = VERDICT_PASS
    elif summary >= settings.marginal_threshold:
        verdict = VERDICT_MARGINAL
    else:
        verdict = VERDICT_FAIL
    return Report(summary, verdict, reason, groups, tuple(results))


def judge(
    observations: Sequence[tuple[MetricAnalysis, Sequence[float], Sequence[float]]],
    settings: JudgeSettings,
) -> Report:
    """Classifies each (analysis, canary samples, baseline samples) and scores the canary."""
    return score(
        [
            classify(analysis, canary, baseline, settings)
            for analysis, canary, baseline in observations
        ],
        settings,
    )


# --- configuration ------------------------------------------------------------------------

# Kayenta's defaults live on the dataclasses; these hold them for the configuration.
_JUDGE_DEFAULTS = JudgeSettings()
_METRIC_DEFAULTS = MetricAnalysis(name="defaults", group="defaults")
# The hook's own defaults; `min_samples` is the hook's (Kayenta's is 1).
HOOK_DEFAULTS: Mapping[str, Any] = {
    "app_namespace": "MLPlatform/Serving",
    "analysis_minutes": 10,
    "min_samples": 5,
    "max_wait_minutes": 30,
    "callback_delay_seconds": 60,
    "marginal_is_failure": True,
}
DEFAULT_GROUP_WEIGHTS: Mapping[str, float] = {"latency": 40, "errors": 40, "quality": 20}
_MISSING = object()


class _Fields:
    """Reads the keys of one JSON object, checking types and ranges; `done` rejects keys
    that were never read, so that a misspelt key is an error rather than a silent default."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a JSON object, got {type(raw).__name__}")
        self._raw, self._where, self._read = raw, where, set()

    def raw(self, key: str, default: object = _MISSING) -> object:
        self._read.add(key)
        if key in self._raw:
            return self._raw[key]
        if default is _MISSING:
            raise ConfigError(f"{self._where}.{key} is required")
        return default

    def error(self, key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(f"{self._where}.{key} must be {expected}, got {value!r}")

    def text(self, key: str, default: object = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise self.error(key, "a non-empty string", value)
        return value

    def choice(self, key: str, options: Sequence[str], default: object = _MISSING) -> str:
        value = self.raw(key, default)
        if value not in options:
            raise self.error(key, f"one of {', '.join(options)}", value)
        return str(value)

    def flag(self, key: str, default: object = _MISSING) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def integer(self, key: str, default: object, *, minimum: int, maximum: int) -> int:
        value = self.raw(key, default)
        # bool is an int subclass, and `true` as a count is a mistake rather than 1.
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(key, f"a whole number from {minimum} to {maximum}", value)
        return value

    def number(
        self, key: str, default: object, *, minimum: float, maximum: float, open_ends: bool = False
    ) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, "a number", value)
        inside = minimum < value < maximum if open_ends else minimum <= value <= maximum
        if not inside:
            interval = f"({minimum:g}, {maximum:g})" if open_ends else f"[{minimum:g}, {maximum:g}]"
            raise self.error(key, f"a number in {interval}", value)
        return float(value)

    def done(self) -> None:
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            raise ConfigError(f"{self._where} has unknown keys: {', '.join(unknown)}")


def _statistic(fields: _Fields) -> str:
    value = fields.text("statistic")
    percent = value[1:] if value.startswith("p") else ""
    if value in STATISTICS or (percent.replace(".", "", 1).isdigit() and 0 < float(percent) <= 100):
        return value
    raise fields.error("statistic", f"one of {', '.join(STATISTICS)} or pNN (e.g. p99)", value)


def _denominator(raw: object, where: str) -> Denominator | None:
    if raw is None:
        return None
    fields = _Fields(raw, where)
    denominator = Denominator(fields.text("metric_name"), _statistic(fields))
    fields.done()
    return denominator


def _metric(raw: object, where: str) -> MetricConfig:
    fields = _Fields(raw, where)
    defaults = _METRIC_DEFAULTS

    def ratio(key: str) -> float:
        return fields.number(
            key, getattr(defaults, key), minimum=0, maximum=math.inf, open_ends=True
        )

    analysis = MetricAnalysis(
        name=fields.text("name"),
        group=fields.text("group"),
        direction=fields.choice("direction", DIRECTIONS, defaults.direction),
        critical=fields.flag("critical", defaults.critical),
        must_have_data=fields.flag("must_have_data", defaults.must_have_data),
        allowed_increase=ratio("allowed_increase"),
        allowed_decrease=ratio("allowed_decrease"),
        critical_increase=ratio("critical_increase"),
        critical_decrease=ratio("critical_decrease"),
        remove_outliers=fields.flag("remove_outliers", defaults.remove_outliers),
        outlier_factor=ratio("outlier_factor"),
    )
    query = MetricQuery(
        source=fields.choice("source", SOURCES),
        metric_name=fields.text("metric_name"),
        statistic=_statistic(fields),
        denominator=_denominator(fields.raw("denominator", None), f"{where}.denominator"),
    )
    fields.done()
    if query.denominator is not None and query.statistic != "Sum":
        raise ConfigError(f"{where}: a metric with a denominator must use the Sum statistic")
    return MetricConfig(analysis=analysis, query=query)


def _metrics(raw: object) -> tuple[MetricConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"CANARY_CONFIG.metrics must be a non-empty list, got {raw!r}")
    metrics = tuple(
        _metric(metric, f"CANARY_CONFIG.metrics[{index}]") for index, metric in enumerate(raw)
    )
    names = [metric.analysis.name for metric in metrics]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"CANARY_CONFIG.metrics has duplicate names: {', '.join(duplicates)}")
    return metrics


def _target_groups(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict) or len(raw) != 2:
        raise ConfigError(
            "CANARY_CONFIG.target_groups must map the two target group ARNs (blue and green) "
            f"to their full names, got {raw!r}"
        )
    for arn, full_name in raw.items():
        # The CloudWatch dimension is the ARN's resource part; a mismatch is a wiring mistake.
        if (
            not isinstance(full_name, str)
            or not full_name.startswith("targetgroup/")
            or not arn.endswith(f":{full_name}")
        ):
            raise ConfigError(
                f"CANARY_CONFIG.target_groups[{arn!r}] must be that ARN's full name "
                f"targetgroup/<name>/<id>, got {full_name!r}"
            )
    return dict(raw)


def _group_weights(raw: object, groups: set[str]) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise ConfigError(f"CANARY_CONFIG.group_weights must be a JSON object, got {raw!r}")
    weights = {}
    for group, weight in raw.items():
        if group not in groups:
            raise ConfigError(f"CANARY_CONFIG.group_weights names {group!r}, which no metric is in")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ConfigError(
                f"CANARY_CONFIG.group_weights[{group!r}] must be a number >= 0, got {weight!r}"
            )
        weights[group] = float(weight)
    total = sum(weights.values())
    if total > 100 + 1e-9 or (set(weights) == groups and abs(total - 100) > 1e-9):
        raise ConfigError(
            "CANARY_CONFIG.group_weights must add up to 100, or to less when some group has "
            f"no weight (those share the rest), got {total:g}"
        )
    return weights


def _settings(fields: _Fields, groups: set[str]) -> JudgeSettings:
    defaults = _JUDGE_DEFAULTS
    pass_threshold = fields.number(
        "pass_threshold", defaults.pass_threshold, minimum=0, maximum=100
    )
    marginal_threshold = fields.number(
        "marginal_threshold", defaults.marginal_threshold, minimum=0, maximum=100
    )
    if marginal_threshold > pass_threshold:
        raise ConfigError(
            f"CANARY_CONFIG.marginal_threshold ({marginal_threshold:g}) must not be above "
            f"pass_threshold ({pass_threshold:g})"
        )
    return JudgeSettings(
        confidence=fields.number(
            "confidence", defaults.confidence, minimum=0, maximum=1, open_ends=True
        ),
        tolerance=fields.number("tolerance", defaults.tolerance, minimum=0, maximum=math.inf),
        min_samples=fields.integer(
            "min_samples", HOOK_DEFAULTS["min_samples"], minimum=1, maximum=10_000
        ),
        pass_threshold=pass_threshold,
        marginal_threshold=marginal_threshold,
        group_weights=_group_weights(fields.raw("group_weights", {}), groups),
    )


def parse_config(raw: object) -> CanaryConfig:
    """Validates the canary configuration (the shape ``default_config`` returns); keys other
    than load_balancer_full_name, target_groups, model_name and metrics may be left out and
    take the defaults ``default_config`` spells out. Raises ConfigError naming the key."""
    fields = _Fields(raw, "CANARY_CONFIG")
    load_balancer = fields.text("load_balancer_full_name")
    if not load_balancer.startswith("app/") or load_balancer.count("/") != 2:
        raise fields.error("load_balancer_full_name", "app/<name>/<id>", load_balancer)
    metrics = _metrics(fields.raw("metrics"))
    analysis_minutes = fields.integer(
        "analysis_minutes", HOOK_DEFAULTS["analysis_minutes"], minimum=1, maximum=1_440
    )
    max_wait_minutes = fields.integer(
        "max_wait_minutes", HOOK_DEFAULTS["max_wait_minutes"], minimum=1, maximum=1_440
    )
    # The window runs on whole minutes, so it can close up to 2 minutes after its length.
    if max_wait_minutes < analysis_minutes + 2:
        raise ConfigError(
            f"CANARY_CONFIG.max_wait_minutes ({max_wait_minutes}) must be at least "
            f"analysis_minutes + 2 ({analysis_minutes + 2})"
        )
    config = CanaryConfig(
        load_balancer_full_name=load_balancer,
        target_groups=_target_groups(fields.raw("target_groups")),
        app_namespace=fields.text("app_namespace", HOOK_DEFAULTS["app_namespace"]),
        model_name=fields.text("model_name"),
        analysis_minutes=analysis_minutes,
        max_wait_minutes=max_wait_minutes,
        callback_delay_seconds=fields.integer(
            "callback_delay_seconds",
            HOOK_DEFAULTS["callback_delay_seconds"],
            minimum=1,
            maximum=900,
        ),
        marginal_is_failure=fields.flag(
            "marginal_is_failure", HOOK_DEFAULTS["marginal_is_failure"]
        ),
        metrics=metrics,
        settings=_settings(fields, {metric.analysis.group for metric in metrics}),
    )
    fields.done()
    return config


def _default_metric(
    *, name: str, source: str, metric_name: str, statistic: str, group: str, **options: Any
) -> dict[str, Any]:
    defaults = _METRIC_DEFAULTS
    return {
        "name": name,
        "source": source,
        "metric_name": metric_name,
        "statistic": statistic,
        "group": group,
        "direction": "increase",
        "critical": defaults.critical,
        "must_have_data": defaults.must_have_data,
        "allowed_increase": defaults.allowed_increase,
        "allowed_decrease": defaults.allowed_decrease,
        "critical_increase": defaults.critical_increase,
        "critical_decrease": defaults.critical_decrease,
        "remove_outliers": defaults.remove_outliers,
        "outlier_factor": defaults.outlier_factor,
        "denominator": None,
        **options,
    }


def default_config(
    *, load_balancer_full_name: str, target_groups: Mapping[str, str], model_name: str
) -> dict[str, Any]:
    """The platform's default ``CANARY_CONFIG`` with every key spelled out.

    Per target group: ALB p99 TargetResponseTime and the 5xx rate (HTTPCode_Target_5XX_Count
    over RequestCount, critical). Per model version, from the serving app's EMF metrics: p99
    Latency, the error rate (the Error count over the SampleCount of Latency, i.e. errors per
    served request) and the mean TopScore, which may move either way. Groups: latency 40,
    errors 40, quality 20.
    """
    judge_defaults = _JUDGE_DEFAULTS
    return {
        "load_balancer_full_name": load_balancer_full_name,
        "target_groups": dict(target_groups),
        "model_name": model_name,
        **HOOK_DEFAULTS,
        "pass_threshold": judge_defaults.pass_threshold,
        "marginal_threshold": judge_defaults.marginal_threshold,
        "confidence": judge_defaults.confidence,
        "tolerance": judge_defaults.tolerance,
        "metrics": [
            _default_metric(
                name="alb_latency_p99",
                source="alb",
                metric_name="TargetResponseTime",
                statistic="p99",
                group="latency",
            ),
            _default_metric(
                name="alb_5xx_rate",
                source="alb",
                metric_name="HTTPCode_Target_5XX_Count",
                statistic="Sum",
                group="errors",
                critical=True,
                denominator={"metric_name": "RequestCount", "statistic": "Sum"},
            ),
            _default_metric(
                name="app_latency_p99",
                source="app",
                metric_name="Latency",
                statistic="p99",
                group="latency",
            ),
            _default_metric(
                name="app_error_rate",
                source="app",
                metric_name="Error",
                statistic="Sum",
                group="errors",
                denominator={"metric_name": "Latency", "statistic": "SampleCount"},
            ),
            _default_metric(
                name="app_score_mean",
                source="app",
                metric_name="TopScore",
                statistic="Average",
                group="quality",
                direction="either",
            ),
        ],
        "group_weights": dict(DEFAULT_GROUP_WEIGHTS),
    }
