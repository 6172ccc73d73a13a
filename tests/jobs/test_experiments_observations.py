"""Tests for jobs.experiments.observations: the results item the analysis job writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobs.experiments.documents import ExperimentPlan, Window
from jobs.experiments.observations import (
    CellObservations,
    MetricSample,
    metric_sample,
    observations_json,
    results_item,
)

START = datetime(2030, 1, 1, tzinfo=UTC)
WINDOW = Window(start=START, end=START + timedelta(days=3, hours=6))
PLAN = ExperimentPlan(
    id="ranker",
    state="running",
    cells=("control", "treatment"),
    metrics=("play_rate", "plays_per_member"),
    start=START,
    end=START + timedelta(days=14),
    stopped_at=None,
)


def test_sql_nulls_are_zeros():
    assert metric_sample(n=3, mean=0.5, variance=0.25) == MetricSample(n=3, mean=0.5, variance=0.25)
    assert metric_sample(n=1, mean=2.0, variance=None) == MetricSample(n=1, mean=2.0, variance=0.0)
    assert metric_sample(n=0, mean=None, variance=None) == MetricSample(n=0, mean=0, variance=0)


def test_a_single_value_has_no_variance_whatever_the_aggregate_says():
    # Spark's var_samp gives NaN for one value under its legacy statistical aggregates.
    assert metric_sample(n=1, mean=2.0, variance=float("nan")).variance == 0.0


def cell(members: int, mean: float) -> CellObservations:
    return CellObservations(
        members=members,
        metrics={
            metric: MetricSample(n=members, mean=mean, variance=0.5)
            for metric in ("play_rate", "completion_rate", "plays_per_member")
        },
    )


def test_the_observations_hold_every_cell_and_only_the_plans_metrics():
    text = observations_json(PLAN, WINDOW, cells={"treatment": cell(4, 0.75)}, cell_conflicts=1)

    empty = {"n": 0, "mean": 0.0, "variance": 0.0}
    treatment = {"n": 4, "mean": 0.75, "variance": 0.5}
    assert json.loads(text) == {
        "format": 1,
        "cells": {
            "control": {"members": 0, "metrics": {"play_rate": empty, "plays_per_member": empty}},
            "treatment": {
                "members": 4,
                "metrics": {"play_rate": treatment, "plays_per_member": treatment},
            },
        },
        "cell_conflicts": 1,
        "window": ["2030-01-01T00:00:00.000000Z", "2030-01-04T06:00:00.000000Z"],
    }


def test_a_cell_the_plan_lacks_is_refused():
    with pytest.raises(ValueError, match="experiment 'ranker' has no cell bold"):
        observations_json(PLAN, WINDOW, cells={"bold": cell(1, 0.0)}, cell_conflicts=0)


def test_a_nan_is_refused_rather_than_written():
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        observations_json(PLAN, WINDOW, cells={"control": cell(2, float("nan"))}, cell_conflicts=0)


def test_the_item_is_keyed_by_experiment_and_utc_computed_at():
    at = datetime(2030, 1, 4, 7, 30, 0, 250, tzinfo=timezone(timedelta(hours=1)))

    item = results_item("ranker", computed_at=at, observations="{}")

    assert item == {
        "experiment_id": {"S": "ranker"},
        "computed_at": {"S": "2030-01-04T06:30:00.000250Z"},
        "observations": {"S": "{}"},
    }
