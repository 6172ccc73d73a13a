"""The analysis (ablaze/results.py): from per-cell observations to the stored result."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from ablaze_helpers import BEFORE_START, START, observations, spec

from ablaze.experiments import Experiment, ExperimentSpec, create_experiment
from ablaze.results import (
    CellObservations,
    Observations,
    ObservationsMismatchError,
    ObservationWindow,
    Result,
    UnreadableObservationsError,
    analyse,
    observations_json,
    parse_observations,
)
from ablaze.statistics import Sample, anytime_valid, fixed_horizon

COMPUTED_AT = datetime(2030, 1, 8, 12, 30, tzinfo=UTC)
THREE_CELLS = [
    {"name": "control", "percent": 10, "model_version": "7", "control": True},
    {"name": "treatment", "percent": 10, "model_version": "8"},
    {"name": "bold", "percent": 10, "model_version": "9"},
]


def experiment(**overrides) -> Experiment:
    return create_experiment(ExperimentSpec.model_validate(spec(**overrides)), now=BEFORE_START)


def fair() -> dict[str, CellObservations]:
    return {
        "control": observations(10_000, 2_000),
        "treatment": observations(10_050, 2_400, plays_mean=2.1),
    }


def test_each_metric_compares_each_treatment_with_the_control() -> None:
    result = analyse(experiment(), fair(), computed_at=COMPUTED_AT)
    assert result.experiment_id == "homepage-ranker"
    assert result.computed_at == COMPUTED_AT
    assert [(m.metric, m.kind, m.role) for m in result.metrics] == [
        ("play_rate", "proportion", "primary"),
        ("completion_rate", "proportion", "guardrail"),
        ("plays_per_member", "mean", "guardrail"),
    ]
    play_rate = result.metrics[0]
    assert [(c.cell, c.n, c.value) for c in play_rate.cells] == [
        ("control", 10_000, 0.2),
        ("treatment", 10_050, pytest.approx(2_400 / 10_050)),
    ]
    [comparison] = play_rate.comparisons
    treatment, control = fair()["treatment"], fair()["control"]
    fixed = fixed_horizon(
        treatment.metrics["play_rate"], control.metrics["play_rate"], kind="proportion"
    )
    sequential = anytime_valid(
        treatment.metrics["play_rate"],
        control.metrics["play_rate"],
        kind="proportion",
        tightest_at=result.tightest_at,
    )
    assert (comparison.treatment, comparison.control) == ("treatment", "control")
    assert comparison.effect == fixed.effect
    assert (comparison.fixed.low, comparison.fixed.high, comparison.fixed.p_value) == (
        fixed.low,
        fixed.high,
        fixed.p_value,
    )
    assert (comparison.sequential.low, comparison.sequential.high) == (
        sequential.low,
        sequential.high,
    )
    assert comparison.fixed.excludes_zero
    assert comparison.trustworthy
    assert result.trustworthy
    assert result.problems == []


def test_the_split_is_checked_against_the_allocation() -> None:
    result = analyse(experiment(), fair())
    assert result.srm.counts == {"control": 10_000, "treatment": 10_050}
    assert result.srm.expected_percent == {"control": 10, "treatment": 10}
    assert 0.7 < result.srm.p_value < 0.75
    assert not result.srm.mismatch
    assert result.srm.threshold == 0.001


def test_a_sample_ratio_mismatch_makes_every_result_untrustworthy() -> None:
    cells = {"control": observations(10_000, 2_000), "treatment": observations(9_000, 1_900)}
    result = analyse(experiment(), cells)
    assert result.srm.mismatch
    assert not result.trustworthy
    assert result.problems[0].startswith("sample ratio mismatch (p = ")
    # With one treatment, its pair is the whole split: the problem is not repeated.
    assert len(result.problems) == 1
    assert all(not c.trustworthy for m in result.metrics for c in m.comparisons)


def test_a_pair_out_of_ratio_is_named_in_its_comparison() -> None:
    cells = {
        "control": observations(10_000, 2_000),
        "treatment": observations(10_000, 2_000),
        "bold": observations(9_500, 1_900),
    }
    result = analyse(experiment(cells=THREE_CELLS), cells)
    comparisons = {c.treatment: c for c in result.metrics[0].comparisons}
    # The whole split is off too, which makes both untrustworthy; only bold's pair is named.
    assert result.srm.mismatch
    assert comparisons["treatment"].problems == []
    assert comparisons["treatment"].srm_p_value == 1.0
    assert not comparisons["bold"].trustworthy
    assert (
        comparisons["bold"]
        .problems[0]
        .startswith("sample ratio mismatch between bold and control (p = ")
    )
    # Named once, not once per metric.
    assert [p for p in result.problems if "between bold and control" in p] == [
        comparisons["bold"].problems[0]
    ]


def test_too_little_data_leaves_the_effect_out_and_says_why() -> None:
    cells = {"control": observations(1, 0), "treatment": observations(1, 1)}
    result = analyse(experiment(), cells)
    plays = result.metrics[2].comparisons[0]
    assert (plays.effect, plays.fixed, plays.sequential) == (None, None, None)
    assert plays.problems == ["too little data: the treatment needs 2 members for a mean, has 1"]
    assert (
        "plays_per_member, treatment: too little data: the treatment needs 2 members for a "
        "mean, has 1"
    ) in result.problems
    assert not result.trustworthy


def test_no_members_yet_is_no_sample_ratio_verdict() -> None:
    empty = CellObservations(
        members=0,
        metrics={
            "play_rate": Sample(n=0, mean=0.0, variance=0.0),
            "completion_rate": Sample(n=0, mean=0.0, variance=0.0),
            "plays_per_member": Sample(n=0, mean=0.0, variance=0.0),
        },
    )
    result = analyse(experiment(), {"control": empty, "treatment": empty})
    assert result.srm.p_value is None
    assert not result.srm.mismatch
    assert not result.trustworthy


def test_metrics_the_experiment_does_not_name_are_left_out() -> None:
    result = analyse(experiment(guardrail_metrics=[]), fair())
    assert [metric.metric for metric in result.metrics] == ["play_rate"]


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ({"control": None}, r"missing \['treatment'\], unknown none"),
        ({"control": None, "treatment": None, "extra": None}, r"unknown \['extra'\]"),
    ],
)
def test_the_observations_must_be_of_the_experiments_cells(cells: dict, message: str) -> None:
    filled = {name: observations(100, 10) for name in cells}
    with pytest.raises(ObservationsMismatchError, match=message):
        analyse(experiment(), filled)


def test_every_cell_needs_every_metric() -> None:
    cells = fair()
    cells["treatment"] = CellObservations(
        members=10, metrics={"play_rate": Sample.of_counts(n=10, successes=1)}
    )
    with pytest.raises(
        ObservationsMismatchError,
        match=r"per_cell_observations\['treatment'\] has no sample of completion_rate, "
        "plays_per_member",
    ):
        analyse(experiment(), cells)


def test_the_result_survives_its_json() -> None:
    result = analyse(experiment(), fair(), computed_at=COMPUTED_AT)
    assert Result.model_validate_json(result.model_dump_json()) == result
    schema = Result.model_json_schema()
    assert set(schema["required"]) >= {"experiment_id", "computed_at", "srm", "metrics"}


# --- stored observations --------------------------------------------------------------------

WINDOW = ObservationWindow(start=START, end=COMPUTED_AT)


def stored(**changes: object) -> str:
    document = {
        "format": 1,
        "cells": {"control": {"members": 2, "metrics": {"play_rate": SAMPLE}}},
        "cell_conflicts": 1,
        "window": ["2030-01-01T00:00:00Z", "2030-01-08T12:30:00Z"],
    }
    return json.dumps({**document, **changes})


SAMPLE = {"n": 2, "mean": 0.5, "variance": 0.5}


def test_observations_survive_their_json() -> None:
    observations = Observations(cells=fair(), cell_conflicts=4, window=WINDOW)
    assert parse_observations(observations_json(observations)) == observations


def test_stored_observations_are_read_into_samples() -> None:
    assert parse_observations(stored()) == Observations(
        cells={
            "control": CellObservations(
                members=2, metrics={"play_rate": Sample(n=2, mean=0.5, variance=0.5)}
            )
        },
        cell_conflicts=1,
        window=WINDOW,
    )


def test_fields_a_later_job_adds_are_ignored() -> None:
    assert parse_observations(stored(runtime_seconds=12)) == parse_observations(stored())


def with_sample(**changes: object) -> str:
    return stored(cells={"c": {"members": 2, "metrics": {"m": {**SAMPLE, **changes}}}})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[1]", "format None is not the one this version reads (1)"),
        (stored(format="1"), "format '1' is not the one this version reads (1)"),
        (stored(cells={"c": {"members": 2}}), "cells.c.metrics: Field required"),
        (with_sample(n=-1), "cells.c.metrics.m.n: Input should be greater than or equal to 0"),
        (with_sample(mean=float("nan")), "cells.c.metrics.m.mean: Input should be a finite number"),
        (stored(window=["2030-01-01T00:00:00Z"]), "window.1: Field required"),
    ],
)
def test_unreadable_observations_name_the_first_fault(text: str, reason: str) -> None:
    with pytest.raises(UnreadableObservationsError) as caught:
        parse_observations(text)
    assert str(caught.value) == reason


def test_the_window_and_conflicts_pass_through_the_analysis() -> None:
    result = analyse(experiment(), fair(), window=WINDOW, cell_conflicts=3)
    assert (result.window, result.cell_conflicts) == (WINDOW, 3)
    assert Result.model_validate_json(result.model_dump_json()) == result
