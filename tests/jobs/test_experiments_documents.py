"""Tests for jobs.experiments.documents: reading ABlaze's experiment documents, and which
experiments are analysed over which window."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobs.experiments.documents import (
    ANALYSIS_AFTER_CLOSE,
    ExperimentDocumentError,
    ExperimentPlan,
    Window,
    analysis_window,
    parse_experiment,
)

START = datetime(2030, 1, 1, tzinfo=UTC)
END = START + timedelta(days=14)


def document(**changes: Any) -> dict[str, Any]:
    """An experiment as ABlaze stores it, with fields the job does not read."""
    fields = {
        "id": "homepage-ranker",
        "description": "Does the new ranker lift plays?",
        "surface": "homepage-row",
        "cells": [
            {"name": "control", "percent": 10.0, "model_version": "7", "control": True,
             "buckets": [[0, 1000]]},
            {"name": "treatment", "percent": 10.0, "model_version": "8", "control": False,
             "buckets": [[1000, 2000]]},
        ],
        "eligibility": {"countries": None, "device_types": None},
        "start": "2030-01-01T00:00:00Z",
        "end": "2030-01-15T00:00:00Z",
        "primary_metric": "play_rate",
        "guardrail_metrics": ["plays_per_member"],
        "salt": "0123456789abcdef0123456789abcdef",
        "state": "running",
        "version": 2,
        "created_at": "2029-12-31T00:00:00Z",
        "allocation_changed_at": "2029-12-31T00:00:00Z",
        "started_at": "2029-12-31T00:00:00Z",
        "stopped_at": None,
    }  # fmt: skip
    return {**fields, **changes}


def plan(**changes: Any) -> ExperimentPlan:
    return parse_experiment(json.dumps(document(**changes)))


def test_only_the_fields_the_job_needs_are_read():
    assert plan(future_field={"anything": 1}) == ExperimentPlan(
        id="homepage-ranker",
        state="running",
        cells=("control", "treatment"),
        metrics=("play_rate", "plays_per_member"),
        start=START,
        end=END,
        stopped_at=None,
    )


def test_guardrails_are_optional_and_times_keep_their_instant():
    parsed = plan(guardrail_metrics=None, start="2030-01-01T01:00:00+01:00")
    assert parsed.metrics == ("play_rate",)
    assert parsed.start == START


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON: Expecting property name enclosed in double quotes"),
        ("[]", "not a JSON object but list"),
        (json.dumps(document(id="")), "id is not a non-empty string"),
        (json.dumps(document(cells=[])), "cells is not a non-empty list"),
        (json.dumps(document(cells=[{"name": "a"}, "b"])), "cells[1] has no name"),
        (json.dumps(document(cells=[{"name": "a"}, {"name": "a"}])), "cells repeat a name: a, a"),
        (json.dumps(document(start="soon")), "start is not an ISO 8601 time: 'soon'"),
        (json.dumps(document(end="2030-01-15T00:00:00")), "end has no time zone"),
        (json.dumps(document(state="stopped")), "a stopped experiment has no stopped_at"),
        (json.dumps(document(guardrail_metrics="plays")), "guardrail_metrics is not a list"),
        (
            json.dumps(document(guardrail_metrics=["watch_hours"])),
            "names metrics the job does not measure: 'watch_hours' (it measures play_rate, "
            "completion_rate, plays_per_member)",
        ),
    ],
)
def test_an_unreadable_document_names_its_first_fault(text: str, reason: str):
    with pytest.raises(ExperimentDocumentError) as caught:
        parse_experiment(text)
    assert str(caught.value).startswith(reason)


def test_a_running_experiment_is_analysed_from_its_start_until_now():
    now = START + timedelta(days=3)
    assert analysis_window(plan(), now=now) == Window(start=START, end=now)


def test_a_stopped_experiment_is_analysed_until_its_stop_for_a_week_after():
    stopped_at = START + timedelta(days=5)
    stopped = plan(state="stopped", stopped_at=stopped_at.isoformat())
    last_moment = stopped_at + ANALYSIS_AFTER_CLOSE - timedelta(microseconds=1)

    assert analysis_window(stopped, now=last_moment) == Window(start=START, end=stopped_at)
    assert analysis_window(stopped, now=stopped_at + ANALYSIS_AFTER_CLOSE) is None


def test_a_running_experiment_past_its_end_is_analysed_until_its_end_for_a_week_after():
    assert analysis_window(plan(), now=END + timedelta(days=6)) == Window(start=START, end=END)
    assert analysis_window(plan(), now=END + timedelta(days=7)) is None


@pytest.mark.parametrize(
    ("state", "now"),
    [("draft", START + timedelta(days=1)), ("running", START), ("running", START - timedelta(1))],
)
def test_drafts_and_windows_not_begun_are_not_analysed(state: str, now: datetime):
    assert analysis_window(plan(state=state), now=now) is None
