"""Tests for jobs.experiments.exposures: a prediction log line's exposure, and each member's
first one."""

from __future__ import annotations

import functools
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobs.experiments.documents import ExperimentPlan, Window
from jobs.experiments.exposures import Scope, earliest, parse_exposure
from jobs.monitoring.prediction_log import MalformedRecordError, epoch_millis

START = datetime(2030, 1, 1, tzinfo=UTC)
END = START + timedelta(days=3)
PLAN = ExperimentPlan(
    id="ranker",
    state="running",
    cells=("control", "treatment"),
    metrics=("play_rate",),
    start=START,
    end=START + timedelta(days=14),
    stopped_at=None,
)
SCOPES = {"ranker": Scope.of(PLAN, Window(start=START, end=END))}


def line(at: datetime = START, **changes: Any) -> str:
    record = {
        "member_id": "m1",
        "model_name": "recommender",
        "model_version": "7",
        "model_artifact_uri": "s3://models/7/model.tar.gz",
        "generated_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "title_ids": ["t1"],
        "scores": [0.5],
        "fallback": None,
        "experiment": "ranker",
        "cell": "treatment",
        "inputs": None,
    }
    return json.dumps({**record, **changes})


def test_a_scope_holds_the_window_in_milliseconds_and_the_cells():
    assert SCOPES["ranker"] == Scope(
        start_ms=epoch_millis(START), end_ms=epoch_millis(END), cells=frozenset(PLAN.cells)
    )


def test_a_record_of_an_analysed_experiment_is_an_exposure():
    at = START + timedelta(hours=5, milliseconds=7)
    assert parse_exposure(line(at), scopes=SCOPES) == (
        ("ranker", "m1"),
        (epoch_millis(at), "treatment", False),
    )


def test_a_fallback_still_exposes_the_member():
    assert parse_exposure(line(fallback="popularity"), scopes=SCOPES) is not None


@pytest.mark.parametrize(
    "text",
    [
        line(experiment=None, cell=None),
        line(experiment="another"),
        line(START - timedelta(milliseconds=1)),
        line(END),
        # Outside every analysed experiment, a line's other faults are not this job's.
        line(experiment=None, scores=[]),
    ],
)
def test_records_of_no_analysed_experiment_or_outside_its_window_are_not_exposures(text: str):
    assert parse_exposure(text, scopes=SCOPES) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON: "),
        ("[]", "not a JSON object but list"),
        (line(experiment=7), "experiment is not null or a string"),
        (line(scores=[]), "0 scores for 1 title_ids"),
        (line(cell="bold"), "cell 'bold' is not a cell of experiment 'ranker'"),
        (line(cell=None), "cell None is not a cell of experiment 'ranker'"),
        (line(cell=["control"]), "cell ['control'] is not a cell of experiment 'ranker'"),
    ],
)
def test_malformed_lines_say_why(text: str, reason: str):
    with pytest.raises(MalformedRecordError) as caught:
        parse_exposure(text, scopes=SCOPES)
    assert str(caught.value).startswith(reason)


def test_the_earliest_record_gives_the_cell():
    assert earliest((5, "treatment", False), (3, "treatment", False)) == (3, "treatment", False)


def test_a_member_seen_in_two_cells_counts_in_the_first_as_a_conflict():
    assert earliest((5, "control", False), (3, "treatment", False)) == (3, "treatment", True)


def test_ties_go_to_the_lesser_cell():
    assert earliest((3, "treatment", False), (3, "control", False)) == (3, "control", True)


def test_the_result_does_not_depend_on_the_order_of_the_records():
    records = [(4, "control", False), (2, "treatment", False), (9, "treatment", False)]
    results = {functools.reduce(earliest, order) for order in itertools.permutations(records)} | {
        earliest(earliest(records[0], records[2]), records[1])
    }
    assert results == {(2, "treatment", True)}


def test_a_conflict_found_earlier_is_kept():
    assert earliest((1, "control", True), (5, "control", False)) == (1, "control", True)
