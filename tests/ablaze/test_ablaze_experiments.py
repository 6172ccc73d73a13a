"""Experiments (ablaze/experiments.py): validation messages, state changes and reallocation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from ablaze_helpers import BEFORE_START, END, KNOWN_VERSIONS, START, spec
from pydantic import ValidationError

from ablaze.experiments import (
    AllocationChange,
    ConflictError,
    Experiment,
    ExperimentSpec,
    InvalidExperimentError,
    check_model_versions,
    create_experiment,
    reallocated,
    started,
    stopped,
)

CONTROL = {"name": "control", "percent": 10, "model_version": "7", "control": True}
TREATMENT = {"name": "treatment", "percent": 10, "model_version": "8"}


def draft(**overrides) -> Experiment:
    return create_experiment(ExperimentSpec.model_validate(spec(**overrides)), now=BEFORE_START)


def running(**overrides) -> Experiment:
    return started(draft(**overrides), now=BEFORE_START)


def change(**percent: float) -> AllocationChange:
    return AllocationChange(percent=percent)


def problems(**overrides) -> str:
    with pytest.raises(ValidationError) as caught:
        ExperimentSpec.model_validate(spec(**overrides))
    return str(caught.value)


# --- validation ---------------------------------------------------------------------------


def test_a_valid_spec_is_accepted_and_times_are_utc() -> None:
    experiment = ExperimentSpec.model_validate(spec(start="2030-01-01T01:00:00+01:00"))
    assert experiment.start == START
    assert experiment.start.utcoffset() == timedelta(0)
    assert experiment.metrics == ("play_rate", "completion_rate", "plays_per_member")
    assert experiment.control.name == "control"
    assert [cell.name for cell in experiment.treatments] == ["treatment"]
    assert experiment.enrolled_percent == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"cells": [CONTROL, {**TREATMENT, "percent": 0}]},
            "must be above 0 and at most 100, got 0",
        ),
        ({"cells": [CONTROL, {**TREATMENT, "percent": 101}]}, "at most 100, got 101"),
        ({"cells": [CONTROL, {**TREATMENT, "percent": 1.005}]}, "steps of 0.01 (one bucket)"),
        (
            {"cells": [{**CONTROL, "percent": 60}, {**TREATMENT, "percent": 50.5}]},
            "cells: percentages add up to 110.5%, at most 100% is allowed (members beyond the "
            "total are not enrolled)",
        ),
        (
            {"cells": [CONTROL, {**CONTROL, "control": False}]},
            "names must be unique, repeated: control",
        ),
        (
            {"cells": [CONTROL, {**TREATMENT, "control": True}]},
            "exactly one cell must have control true, found 2",
        ),
        (
            {"cells": [{**CONTROL, "control": False}, TREATMENT]},
            "exactly one cell must have control true, found 0",
        ),
        ({"cells": [CONTROL]}, "cells: needs a control and 1 to 19 treatments"),
        ({"cells": [CONTROL, {**TREATMENT, "name": "Treatment B"}]}, "cells.1.name"),
        ({"cells": [CONTROL, {**TREATMENT, "model_version": ""}]}, "model_version"),
        ({"end": "2029-12-31T00:00:00Z"}, "end: must be after start (2030-01-01T00:00:00+00:00)"),
        ({"start": "2030-01-01T00:00:00"}, "start\n  Input should have timezone info"),
        (
            {"primary_metric": "watch_time"},
            "unknown metric 'watch_time'; the catalogue has completion_rate, play_rate, "
            "plays_per_member",
        ),
        (
            {"guardrail_metrics": ["play_rate"]},
            "guardrail_metrics: 'play_rate' is already the primary metric",
        ),
        (
            {"guardrail_metrics": ["completion_rate", "completion_rate"]},
            "has duplicates: completion_rate",
        ),
        ({"eligibility": {"countries": []}}, "must not be empty: leave it out to allow everyone"),
        ({"eligibility": {"countries": ["USA"]}}, "countries.0"),
        ({"id": "Homepage Ranker"}, "id\n  String should match pattern"),
        ({"salt": "0" * 32}, "salt\n  Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(overrides: dict, message: str) -> None:
    assert message in problems(**overrides)


def test_eligibility_is_normalised() -> None:
    experiment = ExperimentSpec.model_validate(
        spec(eligibility={"countries": ["us", "CA"], "device_types": ["TV"]})
    )
    assert experiment.eligibility.countries == ["US", "CA"]
    assert experiment.eligibility.device_types == ["tv"]
    rule = experiment.eligibility.allocation()
    assert rule.countries == frozenset({"US", "CA"})
    assert rule.device_types == frozenset({"tv"})


def test_unknown_model_versions_are_named() -> None:
    cells = ExperimentSpec.model_validate(
        spec(cells=[CONTROL, {**TREATMENT, "model_version": "12"}])
    ).cells
    with pytest.raises(InvalidExperimentError) as caught:
        check_model_versions(cells, KNOWN_VERSIONS)
    assert str(caught.value) == (
        "cells[1].model_version: unknown model version '12' (known versions: 7, 8, 9)"
    )
    check_model_versions(cells, {*KNOWN_VERSIONS, "12"})


# --- creation -----------------------------------------------------------------------------


def test_a_new_experiment_is_a_draft_with_a_salt_and_its_layout() -> None:
    experiment = draft()
    assert experiment.state == "draft"
    assert experiment.version == 1
    assert len(experiment.salt) == 32
    assert int(experiment.salt, 16) >= 0
    assert experiment.layout == (((0, 1000),), ((1000, 2000),))
    assert experiment.created_at == experiment.allocation_changed_at == BEFORE_START
    assert draft().salt != experiment.salt


def test_an_experiment_survives_its_json() -> None:
    experiment = running(eligibility={"countries": ["US"]})
    assert Experiment.model_validate_json(experiment.model_dump_json()) == experiment


def test_a_stored_experiment_must_own_the_buckets_of_its_percent() -> None:
    document = draft().model_dump()
    document["cells"][1]["buckets"] = ((1000, 1500),)
    with pytest.raises(ValidationError, match="cell 'treatment' owns 500, not 10%"):
        Experiment.model_validate(document)


def test_a_stored_experiment_must_not_give_a_bucket_to_two_cells() -> None:
    document = draft().model_dump()
    document["cells"][1]["buckets"] = ((500, 1500),)
    with pytest.raises(ValidationError, match=r"\[500, 1500\) overlaps another"):
        Experiment.model_validate(document)


def test_the_allocation_is_what_the_assigner_needs() -> None:
    experiment = draft(eligibility={"device_types": ["tv"]})
    allocation = experiment.allocation()
    assert allocation.experiment_id == "homepage-ranker"
    assert allocation.salt == experiment.salt
    assert [(c.name, c.model_version, c.ranges) for c in allocation.cells] == [
        ("control", "7", ((0, 1000),)),
        ("treatment", "8", ((1000, 2000),)),
    ]
    assert (allocation.start, allocation.end) == (START.timestamp(), END.timestamp())
    assert allocation.eligibility.device_types == frozenset({"tv"})


# --- state --------------------------------------------------------------------------------


def test_draft_runs_then_stops() -> None:
    experiment = running()
    assert (experiment.state, experiment.started_at) == ("running", BEFORE_START)
    ended = stopped(experiment, now=START)
    assert (ended.state, ended.stopped_at) == ("stopped", START)
    assert ended.salt == experiment.salt


@pytest.mark.parametrize(
    ("make", "action", "message"),
    [
        (running, started, "'homepage-ranker' is running; only a draft experiment can start"),
        (draft, stopped, "'homepage-ranker' is draft; only a running experiment can stop"),
        (
            lambda: stopped(running(), now=START),
            started,
            "is stopped; only a draft experiment can start (draft -> running -> stopped)",
        ),
        (lambda: stopped(running(), now=START), stopped, "is stopped; only a running"),
    ],
)
def test_illegal_state_changes_conflict(make, action, message: str) -> None:
    with pytest.raises(ConflictError, match=message.replace("(", r"\(").replace(")", r"\)")):
        action(make(), now=START)


def test_an_experiment_whose_window_ended_cannot_start() -> None:
    with pytest.raises(ConflictError, match="end: the window of 'homepage-ranker' ended at"):
        started(draft(), now=END)


# --- reallocation ---------------------------------------------------------------------------


def test_a_draft_is_laid_out_anew_and_may_shrink() -> None:
    experiment = reallocated(draft(), change(control=5, treatment=30), now=START)
    assert experiment.layout == (((0, 500),), ((500, 3500),))
    assert [cell.percent for cell in experiment.cells] == [5, 30]
    assert experiment.allocation_changed_at == START


def test_a_running_experiment_grows_from_the_pool_keeping_its_buckets() -> None:
    experiment = reallocated(running(), change(treatment=20), now=START)
    assert experiment.layout == (((0, 1000),), ((1000, 3000),))
    both = reallocated(experiment, change(control=20), now=START)
    assert both.layout == (((0, 1000), (3000, 4000)), ((1000, 3000),))
    assert both.state == "running"


def test_a_running_experiment_cannot_shrink_a_cell() -> None:
    with pytest.raises(ConflictError) as caught:
        reallocated(running(), change(control=5, treatment=20), now=START)
    assert str(caught.value) == (
        "percent: 'homepage-ranker' is running and shrinking a cell would move its members out "
        "(control 10% -> 5%); cells of a running experiment can only grow, so stop it and "
        "start a new experiment instead"
    )


def test_a_stopped_experiment_keeps_its_allocation() -> None:
    with pytest.raises(ConflictError, match="is stopped; its allocation cannot change"):
        reallocated(stopped(running(), now=START), change(treatment=20), now=START)


def test_reallocation_names_unknown_cells() -> None:
    with pytest.raises(
        InvalidExperimentError,
        match="percent: no cell named 'b', 'c'; the cells are control, treatment",
    ):
        reallocated(draft(), change(b=5, c=5), now=START)


def test_reallocation_keeps_the_total_at_most_100() -> None:
    with pytest.raises(InvalidExperimentError, match="percentages add up to 110%"):
        reallocated(running(), change(treatment=100), now=START)


@pytest.mark.parametrize(
    ("percent", "message"),
    [
        ({}, "percent\n  Dictionary should have at least 1 item"),
        ({"treatment": 0}, "percent.treatment\n  Value error, must be above 0"),
    ],
)
def test_an_allocation_change_needs_valid_percentages(percent: dict, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AllocationChange.model_validate({"percent": percent})
    assert message in str(caught.value)
