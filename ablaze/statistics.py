"""The statistics of an experiment's results, in plain Python (the tests check them with SciPy).

Every comparison is treatment minus control, from each cell's :class:`Sample` (members, mean,
sample variance), and gives an :class:`Estimate`: the effect, an interval and a p-value.

Fixed horizon (valid when the data is looked at once, at the planned end)
    Proportions: the two-proportion z-test with the unpooled standard error
    ``se = sqrt(p_t (1 - p_t) / n_t + p_c (1 - p_c) / n_c)``; the interval is
    ``effect +- z_(1 - alpha/2) se`` and the p-value ``2 (1 - Phi(|effect| / se))``. The
    unpooled error (rather than the pooled one of the textbook test) makes the interval and
    the p-value agree: the interval excludes 0 exactly when p < alpha.
    Means: Welch's t-test, with the Welch-Satterthwaite degrees of freedom.

Anytime valid (valid however often the data is looked at)
    The asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
    ("Time-uniform central limit theory and asymptotic confidence sequences", Annals of
    Statistics, 2024, Theorem 2.2), the normal-mixture boundary Netflix uses for sequential
    A/B tests. After ``t`` observations with estimated per-unit variance ``s^2``, the interval

        effect +- s sqrt( 2 (t rho^2 + 1) / (t^2 rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

    covers the true effect at every ``t`` at once with probability 1 - alpha (asymptotically).
    Here ``t = n_t + n_c`` and ``s^2 = t V``, where ``V`` is the variance of the difference
    estimator (``p(1-p)/n`` or ``s^2/n`` per cell, summed), which makes the width
    ``sqrt(V * 2 (t rho^2 + 1) / (t rho^2) * log(sqrt(t rho^2 + 1) / alpha))``.
    The tuning parameter ``rho`` sets where the boundary is narrowest; it is chosen for
    ``tightest_at`` members, ``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / tightest_at``
    (the paper's recommendation). Any ``rho`` gives a valid sequence; a badly chosen one only
    gives wider intervals. The always-valid p-value is the smallest alpha whose interval
    excludes 0: ``min(1, sqrt(t rho^2 + 1) exp(-effect^2 / (2 V (t rho^2 + 1) / (t rho^2))))``,
    with ``rho`` kept at the design alpha's.

Sample-ratio mismatch
    Pearson's chi-square goodness of fit of the members counted in each cell against the
    configured split. A mismatch is flagged at p < 0.001, the conservative threshold of the
    experimentation literature (Fabijan et al., "Diagnosing Sample Ratio Mismatch", KDD 2019):
    the check runs on every analysis of every experiment, so a looser one would raise false
    alarms, and a real mismatch (a bug in assignment or logging) is usually far below it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist, fmean, variance

from ablaze.experiments import MetricKind

SRM_THRESHOLD = 0.001
DEFAULT_ALPHA = 0.05
_NORMAL = NormalDist()
_MAX_ITERATIONS = 10_000
_MAX_NEWTON_STEPS = 100
_EPSILON = 1e-15


class InsufficientDataError(ValueError):
    """Too few members, or no variation, to estimate an effect."""


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One cell's observations of one metric: members, mean and sample variance (ddof 1).

    A proportion's mean is the share of members with the event; its variance is not used.
    """

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        if len(values) < 2:
            raise InsufficientDataError(f"a sample needs 2 values, got {len(values)}")
        return cls(n=len(values), mean=fmean(values), variance=variance(values))

    @classmethod
    def of_counts(cls, *, n: int, successes: int) -> Sample:
        """A proportion: ``successes`` of ``n`` members had the event."""
        if not 0 <= successes <= n:
            raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
        share = successes / n if n else 0.0
        return cls(n=n, mean=share, variance=share * (1 - share) * n / (n - 1) if n > 1 else 0.0)


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """Treatment minus control, its interval [low, high] and the p-value of no effect."""

    effect: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0 or self.high < 0


@dataclass(frozen=True, kw_only=True)
class SampleRatio:
    """The chi-square test of the cell counts against the configured split."""

    statistic: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_THRESHOLD


def fixed_horizon(
    treatment: Sample, control: Sample, *, kind: MetricKind, alpha: float = DEFAULT_ALPHA
) -> Estimate:
    """The z-test for a proportion, Welch's t-test for a mean."""
    test = two_proportion_z_test if kind == "proportion" else welch_t_test
    return test(treatment, control, alpha=alpha)


def two_proportion_z_test(
    treatment: Sample, control: Sample, *, alpha: float = DEFAULT_ALPHA
) -> Estimate:
    """Difference of proportions with the unpooled standard error (see the module docstring)."""
    effect, error_variance = _difference(treatment, control, kind="proportion")
    standard_error = math.sqrt(error_variance)
    margin = _NORMAL.inv_cdf(1 - alpha / 2) * standard_error
    return Estimate(
        effect=effect,
        low=effect - margin,
        high=effect + margin,
        p_value=math.erfc(abs(effect) / standard_error / math.sqrt(2)),
    )


def welch_t_test(treatment: Sample, control: Sample, *, alpha: float = DEFAULT_ALPHA) -> Estimate:
    """Welch's unequal-variance t-test, as ``scipy.stats.ttest_ind(equal_var=False)``."""
    for name, sample in (("treatment", treatment), ("control", control)):
        if sample.n < 2:
            raise InsufficientDataError(f"the {name} needs 2 members for a mean, has {sample.n}")
    effect, error_variance = _difference(treatment, control, kind="mean")
    treatment_part = treatment.variance / treatment.n
    control_part = control.variance / control.n
    degrees = error_variance**2 / (
        treatment_part**2 / (treatment.n - 1) + control_part**2 / (control.n - 1)
    )
    standard_error = math.sqrt(error_variance)
    margin = student_t_quantile(1 - alpha / 2, degrees) * standard_error
    return Estimate(
        effect=effect,
        low=effect - margin,
        high=effect + margin,
        p_value=2 * student_t_upper_tail(abs(effect) / standard_error, degrees),
    )


def anytime_valid(
    treatment: Sample,
    control: Sample,
    *,
    kind: MetricKind,
    tightest_at: int,
    alpha: float = DEFAULT_ALPHA,
) -> Estimate:
    """The asymptotic confidence sequence and always-valid p-value (module docstring)."""
    if tightest_at < 1:
        raise ValueError(f"tightest_at must be at least 1, got {tightest_at}")
    effect, error_variance = _difference(treatment, control, kind=kind)
    t = treatment.n + control.n
    log_alpha = math.log(alpha)
    rho_squared = (-2 * log_alpha + math.log(-2 * log_alpha + 1)) / tightest_at
    growth = t * rho_squared + 1
    scale = error_variance * 2 * growth / (t * rho_squared)
    margin = math.sqrt(scale * (0.5 * math.log(growth) - log_alpha))
    p_value = min(1.0, math.sqrt(growth) * math.exp(-(effect**2) / scale))
    return Estimate(effect=effect, low=effect - margin, high=effect + margin, p_value=p_value)


def sample_ratio(counts: Sequence[int], shares: Sequence[float]) -> SampleRatio:
    """Chi-square goodness of fit of ``counts`` against ``shares`` (any positive weights)."""
    if len(counts) != len(shares) or len(counts) < 2:
        raise ValueError("sample_ratio needs a count and a share for each of 2 or more cells")
    if any(share <= 0 for share in shares):
        raise ValueError(f"every share must be above 0, got {list(shares)}")
    total = sum(counts)
    if total == 0:
        raise InsufficientDataError("no member is counted in any cell")
    weight = sum(shares)
    expected = [total * share / weight for share in shares]
    statistic = sum(
        (count - want) ** 2 / want for count, want in zip(counts, expected, strict=True)
    )
    return SampleRatio(
        statistic=statistic, p_value=chi_square_upper_tail(statistic, len(counts) - 1)
    )


def _difference(treatment: Sample, control: Sample, *, kind: MetricKind) -> tuple[float, float]:
    """The effect and the variance of its estimator."""
    for name, sample in (("treatment", treatment), ("control", control)):
        if sample.n < 1:
            raise InsufficientDataError(f"the {name} has no members")
    if kind == "proportion":
        parts = [s.mean * (1 - s.mean) / s.n for s in (treatment, control)]
    else:
        parts = [s.variance / s.n for s in (treatment, control)]
    error_variance = sum(parts)
    if error_variance <= 0:
        raise InsufficientDataError("neither cell varies, so the effect has no error estimate")
    return treatment.mean - control.mean, error_variance


# --- distributions ------------------------------------------------------------------------


def chi_square_upper_tail(statistic: float, degrees: int) -> float:
    """P(X >= statistic) for X chi-square with whole ``degrees``: ``Q(degrees/2, statistic/2)``.

    The regularised upper incomplete gamma function of a whole or half-whole ``a`` has a
    closed form: ``Q(1/2, y) = erfc(sqrt y)``, ``Q(1, y) = exp(-y)``, and
    ``Q(a + 1, y) = Q(a, y) + y^a exp(-y) / Gamma(a + 1)``.
    """
    if degrees < 1:
        raise ValueError(f"degrees must be at least 1, got {degrees}")
    if statistic <= 0:
        return 1.0
    half = statistic / 2
    a = 0.5 if degrees % 2 else 1.0
    tail = math.erfc(math.sqrt(half)) if degrees % 2 else math.exp(-half)
    while a < degrees / 2:
        tail += math.exp(a * math.log(half) - half - math.lgamma(a + 1))
        a += 1
    return min(1.0, tail)


def student_t_upper_tail(t: float, degrees: float) -> float:
    """P(T >= t) for t >= 0 and T Student's t with ``degrees`` (any positive real)."""
    if t < 0:
        raise ValueError(f"t must be at least 0, got {t}")
    return 0.5 * regularized_incomplete_beta(degrees / 2, 0.5, degrees / (degrees + t * t))


def student_t_quantile(probability: float, degrees: float) -> float:
    """The t with P(T <= t) = ``probability``, for ``probability`` in [0.5, 1).

    Newton's method from the normal quantile, which is below the answer: the distribution
    function is concave above 0, so every step stays below the root and the gap to
    ``probability`` shrinks. With many degrees of freedom the distribution function is only
    accurate to about 1e-10, so the gap stops shrinking there, which ends the search.
    """
    if not 0.5 <= probability < 1:
        raise ValueError(f"probability must be in [0.5, 1), got {probability}")
    t = _NORMAL.inv_cdf(probability)
    previous_gap = math.inf
    for _ in range(_MAX_NEWTON_STEPS):
        gap = probability - (1 - student_t_upper_tail(t, degrees))
        if gap <= 0 or gap >= previous_gap:
            return t
        step = gap / _student_t_density(t, degrees)
        t += step
        if step <= 1e-12 * t:
            return t
        previous_gap = gap
    raise ArithmeticError(
        f"the t quantile of {probability} with {degrees} degrees did not converge"
    )


def _student_t_density(t: float, degrees: float) -> float:
    log_density = (
        math.lgamma((degrees + 1) / 2)
        - math.lgamma(degrees / 2)
        - 0.5 * math.log(degrees * math.pi)
        - (degrees + 1) / 2 * math.log1p(t * t / degrees)
    )
    return math.exp(log_density)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by the continued fraction (modified Lentz), on the side where it converges."""
    if not 0 <= x <= 1:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0, 1):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_continued_fraction(b, a, 1 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, _MAX_ITERATIONS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < _EPSILON:
            return fraction
    raise ArithmeticError(f"the incomplete beta I_{x}({a}, {b}) did not converge")
