"""An experiment's results: the observations the analysis job stores, and the analysis of
them that the API and the results page show.

The analysis job (``jobs/batch/experiment_analysis.py``) writes, per experiment and run, how
many members each cell has and each metric's :class:`~ablaze.statistics.Sample`, as JSON
(``jobs/experiments/__init__.py`` describes the format, :func:`parse_observations` reads it).
The store reads the latest and calls :func:`analyse`, so the statistics live here alone and
a change to them applies to every stored run at once. JSON shape of the :class:`Result`
(``Result.model_json_schema()`` has it in full)::

    {"experiment_id", "computed_at", "alpha", "tightest_at",
     "window": {"start", "end"} | null, "cell_conflicts",
     "srm": {"counts": {cell: members}, "expected_percent": {cell: percent},
             "p_value", "mismatch", "threshold"},
     "trustworthy", "problems": [str],
     "metrics": [{"metric", "kind", "role": "primary" | "guardrail",
                  "cells": [{"cell", "n", "value"}],
                  "comparisons": [{"treatment", "control", "effect",
                                   "fixed": {"low", "high", "p_value"},
                                   "sequential": {"low", "high", "p_value"},
                                   "srm_p_value", "trustworthy", "problems": [str]}]}]}

A comparison is untrustworthy when the experiment's split is off (sample-ratio mismatch over
all cells), when its treatment and control are off against each other (``srm_p_value``
below the threshold), or when there is too little data to estimate it (``effect``,
``fixed`` and ``sequential`` are then null). Counts are compared with the current
allocation: after a ramp that changed the cells' ratio, analyse members assigned since
``allocation_changed_at`` (or ramp every cell by the same factor). ``cell_conflicts`` counts
the members seen in more than one cell, each counted in the first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ablaze import statistics
from ablaze.experiments import METRICS, Experiment, MetricKind, UtcDatetime
from ablaze.statistics import InsufficientDataError, Sample

# The sample size the anytime-valid intervals are narrowest at, when the caller does not say.
DEFAULT_TIGHTEST_AT = 100_000
# The version of the stored observations this code reads (see parse_observations).
OBSERVATIONS_FORMAT = 1


class UnreadableObservationsError(ValueError):
    """Stored observations in a format or shape this version cannot read; one line says why."""


class ObservationsMismatchError(ValueError):
    """The observations do not fit the experiment (a cell or a metric sample is missing)."""


class _Schema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CellValue(_Schema):
    cell: str
    n: int
    value: float


class Interval(_Schema):
    low: float
    high: float
    p_value: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


class Comparison(_Schema):
    """One treatment against the control on one metric.

    ``problems`` are this comparison's own (its pair's split, too little data); a mismatch of
    the whole split is the result's problem, and makes every comparison untrustworthy too.
    """

    treatment: str
    control: str
    effect: float | None
    fixed: Interval | None
    sequential: Interval | None
    srm_p_value: float | None
    trustworthy: bool
    problems: list[str]


class MetricResult(_Schema):
    metric: str
    kind: MetricKind
    role: Literal["primary", "guardrail"]
    cells: list[CellValue]
    comparisons: list[Comparison]


class ObservationWindow(_Schema):
    """The exposures and outcomes a result is over: from ``start`` up to ``end``."""

    start: UtcDatetime
    end: UtcDatetime


class SampleRatioCheck(_Schema):
    """Members per cell against the configured split; p_value is null with no members."""

    counts: dict[str, int]
    expected_percent: dict[str, float]
    p_value: float | None
    mismatch: bool
    threshold: float


class Result(_Schema):
    experiment_id: str
    computed_at: UtcDatetime
    alpha: float
    tightest_at: int
    window: ObservationWindow | None = None
    cell_conflicts: int = 0
    srm: SampleRatioCheck
    trustworthy: bool
    problems: list[str]
    metrics: list[MetricResult]


@dataclass(frozen=True, kw_only=True)
class CellObservations:
    """What the analysis job measured in one cell: the members first exposed in it, and each
    metric's sample over them."""

    members: int
    metrics: Mapping[str, Sample]


@dataclass(frozen=True, kw_only=True)
class Observations:
    """One run of the analysis job: each cell's observations, the members seen in more than
    one cell (counted in the first), and the window they are over."""

    cells: Mapping[str, CellObservations]
    cell_conflicts: int
    window: ObservationWindow


class _Stored(BaseModel):
    # Fields a later job adds within the same format are ignored; an incompatible change
    # comes with a new format number.
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class _StoredSample(_Stored):
    n: Annotated[int, Field(ge=0)]
    mean: float
    variance: Annotated[float, Field(ge=0)]


class _StoredCell(_Stored):
    members: Annotated[int, Field(ge=0)]
    metrics: dict[str, _StoredSample]


class _StoredObservations(_Stored):
    # parse_observations checks it first, to name a format it cannot read as such.
    format: int
    cells: dict[str, _StoredCell]
    cell_conflicts: Annotated[int, Field(ge=0)]
    window: tuple[UtcDatetime, UtcDatetime]


def parse_observations(text: str) -> Observations:
    """The observations of a results item's ``observations`` attribute.

    Raises :class:`UnreadableObservationsError` naming the first fault: not JSON, a format
    other than :data:`OBSERVATIONS_FORMAT`, or a field missing or out of range.
    """
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise UnreadableObservationsError(f"not JSON: {exc}") from None
    stored_format = document.get("format") if isinstance(document, dict) else None
    if stored_format != OBSERVATIONS_FORMAT:
        raise UnreadableObservationsError(
            f"format {stored_format!r} is not the one this version reads ({OBSERVATIONS_FORMAT})"
        )
    try:
        stored = _StoredObservations.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UnreadableObservationsError(f"{where}: {first['msg']}") from None
    return Observations(
        cells={
            name: CellObservations(
                members=cell.members,
                metrics={
                    metric: Sample(n=sample.n, mean=sample.mean, variance=sample.variance)
                    for metric, sample in cell.metrics.items()
                },
            )
            for name, cell in stored.cells.items()
        },
        cell_conflicts=stored.cell_conflicts,
        window=ObservationWindow(start=stored.window[0], end=stored.window[1]),
    )


def observations_json(observations: Observations) -> str:
    """The stored JSON of ``observations``, as :func:`parse_observations` reads it."""
    stored = _StoredObservations(
        format=OBSERVATIONS_FORMAT,
        cells={
            name: _StoredCell(
                members=cell.members,
                metrics={
                    metric: _StoredSample(n=sample.n, mean=sample.mean, variance=sample.variance)
                    for metric, sample in cell.metrics.items()
                },
            )
            for name, cell in observations.cells.items()
        },
        cell_conflicts=observations.cell_conflicts,
        window=(observations.window.start, observations.window.end),
    )
    return stored.model_dump_json()


def analyse(
    experiment: Experiment,
    per_cell_observations: Mapping[str, CellObservations],
    *,
    computed_at: datetime | None = None,
    alpha: float = statistics.DEFAULT_ALPHA,
    tightest_at: int = DEFAULT_TIGHTEST_AT,
    window: ObservationWindow | None = None,
    cell_conflicts: int = 0,
) -> Result:
    """The result of ``experiment`` from each cell's observations (keyed by cell name).

    Every cell must have observations of every metric the experiment names; metrics it does
    not name are left out. Raises ObservationsMismatchError naming what is missing or
    unknown. ``window`` and ``cell_conflicts`` are the observations' own, passed through.
    """
    _check_observations(experiment, per_cell_observations)
    srm = _sample_ratio_check(experiment, per_cell_observations)
    pair_problems = {
        treatment.name: _pair_problem(
            srm, treatment=treatment.name, control=experiment.control.name
        )
        for treatment in experiment.treatments
    }
    metrics = [
        _metric_result(
            experiment,
            per_cell_observations,
            metric=metric,
            srm=srm,
            pair_problems=pair_problems,
            alpha=alpha,
            tightest_at=tightest_at,
        )
        for metric in experiment.metrics
    ]
    problems = []
    if srm.mismatch:
        problems.append(
            f"sample ratio mismatch (p = {srm.p_value:.2g} < {srm.threshold}): members are not "
            "split as configured, so no effect of this experiment can be trusted"
        )
    # With one treatment its pair is the whole split, which the line above covers.
    if len(pair_problems) > 1:
        problems += [problem for problem in pair_problems.values() if problem]
    problems += [
        f"{metric.metric}, {comparison.treatment}: {problem}"
        for metric in metrics
        for comparison in metric.comparisons
        for problem in comparison.problems
        if problem != pair_problems[comparison.treatment]
    ]
    return Result(
        experiment_id=experiment.id,
        computed_at=computed_at or datetime.now(UTC),
        alpha=alpha,
        tightest_at=tightest_at,
        window=window,
        cell_conflicts=cell_conflicts,
        srm=srm,
        trustworthy=not problems,
        problems=problems,
        metrics=metrics,
    )


def _check_observations(
    experiment: Experiment, observations: Mapping[str, CellObservations]
) -> None:
    names = [cell.name for cell in experiment.cells]
    missing = [name for name in names if name not in observations]
    unknown = sorted(set(observations) - set(names))
    if missing or unknown:
        raise ObservationsMismatchError(
            f"per_cell_observations must have the cells of {experiment.id!r} "
            f"({', '.join(names)}): missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    for name in names:
        absent = [
            metric for metric in experiment.metrics if metric not in observations[name].metrics
        ]
        if absent:
            raise ObservationsMismatchError(
                f"per_cell_observations[{name!r}] has no sample of {', '.join(absent)}"
            )


def _sample_ratio_check(
    experiment: Experiment, observations: Mapping[str, CellObservations]
) -> SampleRatioCheck:
    counts = {cell.name: observations[cell.name].members for cell in experiment.cells}
    percents = {cell.name: cell.percent for cell in experiment.cells}
    p_value = _srm_p_value(counts, percents)
    return SampleRatioCheck(
        counts=counts,
        expected_percent=percents,
        p_value=p_value,
        mismatch=p_value is not None and p_value < statistics.SRM_THRESHOLD,
        threshold=statistics.SRM_THRESHOLD,
    )


def _srm_p_value(counts: Mapping[str, int], percents: Mapping[str, float]) -> float | None:
    try:
        return statistics.sample_ratio(list(counts.values()), list(percents.values())).p_value
    except InsufficientDataError:
        return None


def _pair_p_value(srm: SampleRatioCheck, names: tuple[str, str]) -> float | None:
    return _srm_p_value(
        {name: srm.counts[name] for name in names},
        {name: srm.expected_percent[name] for name in names},
    )


def _pair_problem(srm: SampleRatioCheck, *, treatment: str, control: str) -> str | None:
    p_value = _pair_p_value(srm, (treatment, control))
    if p_value is None or p_value >= srm.threshold:
        return None
    return (
        f"sample ratio mismatch between {treatment} and {control} "
        f"(p = {p_value:.2g} < {srm.threshold})"
    )


def _metric_result(
    experiment: Experiment,
    observations: Mapping[str, CellObservations],
    *,
    metric: str,
    srm: SampleRatioCheck,
    pair_problems: Mapping[str, str | None],
    alpha: float,
    tightest_at: int,
) -> MetricResult:
    kind = METRICS[metric]
    control = experiment.control
    comparisons = [
        _comparison(
            control=observations[control.name].metrics[metric],
            treatment=observations[treatment.name].metrics[metric],
            names=(treatment.name, control.name),
            kind=kind,
            srm=srm,
            pair_problem=pair_problems[treatment.name],
            alpha=alpha,
            tightest_at=tightest_at,
        )
        for treatment in experiment.treatments
    ]
    return MetricResult(
        metric=metric,
        kind=kind,
        role="primary" if metric == experiment.primary_metric else "guardrail",
        cells=[
            CellValue(cell=cell.name, n=sample.n, value=sample.mean)
            for cell in experiment.cells
            for sample in [observations[cell.name].metrics[metric]]
        ],
        comparisons=comparisons,
    )


def _comparison(
    *,
    treatment: Sample,
    control: Sample,
    names: tuple[str, str],
    kind: MetricKind,
    srm: SampleRatioCheck,
    pair_problem: str | None,
    alpha: float,
    tightest_at: int,
) -> Comparison:
    problems = [pair_problem] if pair_problem else []
    try:
        fixed = statistics.fixed_horizon(treatment, control, kind=kind, alpha=alpha)
        sequential = statistics.anytime_valid(
            treatment, control, kind=kind, alpha=alpha, tightest_at=tightest_at
        )
    except InsufficientDataError as exc:
        problems.append(f"too little data: {exc}")
        fixed = sequential = None
    treatment_name, control_name = names
    return Comparison(
        treatment=treatment_name,
        control=control_name,
        effect=None if fixed is None else fixed.effect,
        fixed=_interval(fixed),
        sequential=_interval(sequential),
        srm_p_value=_pair_p_value(srm, names),
        trustworthy=not problems and not srm.mismatch,
        problems=problems,
    )


def _interval(estimate: statistics.Estimate | None) -> Interval | None:
    if estimate is None:
        return None
    return Interval(low=estimate.low, high=estimate.high, p_value=estimate.p_value)
