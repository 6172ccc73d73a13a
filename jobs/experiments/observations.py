"""The results item of an experiment: each cell's members and metric samples, as
:mod:`jobs.experiments` describes them for ABlaze to read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.experiments.documents import ExperimentPlan, Window

FORMAT = 1
# ABlaze's metric catalogue (ablaze/experiments.py), each measured once per exposed member.
METRICS = ("play_rate", "completion_rate", "plays_per_member")
COMPUTED_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True, kw_only=True)
class MetricSample:
    """One metric over a cell's members: how many, their mean and sample variance (ddof 1)."""

    n: int
    mean: float
    variance: float


@dataclass(frozen=True, kw_only=True)
class CellObservations:
    """A cell's members (first exposed in it) and each metric's sample over them."""

    members: int
    metrics: Mapping[str, MetricSample]


NO_MEMBERS = CellObservations(
    members=0, metrics={metric: MetricSample(n=0, mean=0.0, variance=0.0) for metric in METRICS}
)


def metric_sample(*, n: int, mean: float | None, variance: float | None) -> MetricSample:
    """The sample from a count, mean and sample variance as SQL aggregates give them: the mean
    is null without values, the variance below two, and both count as 0 then."""
    return MetricSample(
        n=n,
        mean=0.0 if mean is None else float(mean),
        variance=0.0 if variance is None or n < 2 else float(variance),
    )


def observations_json(
    plan: ExperimentPlan,
    window: Window,
    *,
    cells: Mapping[str, CellObservations],
    cell_conflicts: int,
) -> str:
    """The ``observations`` attribute of ``plan``'s item: every cell of the plan (those
    without observations with none) and the metrics the plan names."""
    unknown = sorted(set(cells) - set(plan.cells))
    if unknown:
        raise ValueError(f"experiment {plan.id!r} has no cell {', '.join(unknown)}")
    document = {
        "format": FORMAT,
        "cells": {
            name: _cell_document(cells.get(name, NO_MEMBERS), plan.metrics) for name in plan.cells
        },
        "cell_conflicts": cell_conflicts,
        "window": [_utc_text(window.start), _utc_text(window.end)],
    }
    # A NaN would be written as a token that strict JSON readers reject; refuse it here.
    return json.dumps(document, allow_nan=False, sort_keys=True)


def results_item(
    experiment_id: str, *, computed_at: datetime, observations: str
) -> dict[str, dict[str, str]]:
    """The DynamoDB item (attribute values) of one run's observations of an experiment."""
    return {
        "experiment_id": {"S": experiment_id},
        "computed_at": {"S": _utc_text(computed_at)},
        "observations": {"S": observations},
    }


def _cell_document(cell: CellObservations, metrics: tuple[str, ...]) -> dict:
    return {
        "members": cell.members,
        "metrics": {
            metric: {
                "n": cell.metrics[metric].n,
                "mean": cell.metrics[metric].mean,
                "variance": cell.metrics[metric].variance,
            }
            for metric in metrics
        },
    }


def _utc_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime(COMPUTED_AT_FORMAT)
