"""Tests for jobs.monitoring.prediction_log: reading the serving tasks' prediction records."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from jobs.monitoring import prediction_log
from jobs.monitoring.prediction_log import MalformedRecordError, parse_prediction

RECORD = {
    "member_id": "m1",
    "model_name": "title-recommender",
    "model_version": "3",
    "model_artifact_uri": "s3://artifacts/models/title-recommender/3/model.tar.gz",
    "generated_at": "2026-12-02T17:00:00.123Z",
    "title_ids": ["t1", "t2"],
    "scores": [2.5, 1],
    "fallback": None,
    "experiment": "exp-1",
    "cell": "treatment",
    "inputs": {"history_length": 4.0, "history_popularity": None},
}


def line(**changes) -> str:
    return json.dumps({**RECORD, **changes})


def test_parses_a_record_with_its_time_in_epoch_milliseconds():
    assert parse_prediction(line()) == {
        "member_id": "m1",
        "model_name": "title-recommender",
        "model_version": "3",
        "model_artifact_uri": "s3://artifacts/models/title-recommender/3/model.tar.gz",
        "generated_at_ms": 1_796_230_800_123,
        "title_ids": ["t1", "t2"],
        "scores": [2.5, 1.0],
        "fallback": None,
        "inputs": {"history_length": 4.0, "history_popularity": None},
    }


def test_a_time_with_an_offset_is_converted_to_utc():
    record = parse_prediction(line(generated_at="2026-12-02T18:00:00.123+01:00"))

    assert record["generated_at_ms"] == 1_796_230_800_123


@pytest.mark.parametrize("fallback", ["popularity", "store_timeout", "store_unavailable"])
def test_fallback_records_are_valid(fallback):
    assert parse_prediction(line(fallback=fallback, inputs=None))["fallback"] == fallback


def test_an_empty_ranking_is_valid():
    assert parse_prediction(line(title_ids=[], scores=[]))["title_ids"] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not JSON: Expecting value: line 1 column 1 (char 0)"),
        ('{"member_id": "m1"', "not JSON: "),
        ("[1, 2]", "not a JSON object but list"),
        (line(member_id=None), "member_id is not a non-empty string"),
        (line(model_version=""), "model_version is not a non-empty string"),
        (line(model_artifact_uri=3), "model_artifact_uri is not a non-empty string"),
        (line(title_ids="t1"), "title_ids is not a list of non-empty strings"),
        (line(title_ids=["t1", 2]), "title_ids is not a list of non-empty strings"),
        (line(scores=[1.0, "2"]), "scores is not a list of finite numbers"),
        (line(scores=[1.0, True]), "scores is not a list of finite numbers"),
        (line().replace("2.5", "NaN"), "scores is not a list of finite numbers"),
        (line(scores=[1.0]), "1 scores for 2 title_ids"),
        (line(fallback="cache"), "fallback 'cache' is not null or one of ['popularity', "),
        (line(generated_at=1796230800), "generated_at is not a string"),
        (line(generated_at="yesterday"), "generated_at is not an ISO 8601 time: 'yesterday'"),
        (line(generated_at="2026-12-02T17:00:00"), "generated_at has no time zone: "),
        (line(inputs=[4.0]), "inputs is not null or an object of finite numbers and nulls"),
        (line(inputs={"history_length": "4"}), "inputs is not null or an object of finite "),
    ],
)
def test_malformed_lines_are_refused_with_the_reason(text, message):
    with pytest.raises(MalformedRecordError, match=f"^{re.escape(message)}"):
        parse_prediction(text)


def test_experiment_and_cell_are_not_read():
    assert parse_prediction(line(experiment=7, cell=["x"]))["member_id"] == "m1"


def test_hour_folders_reach_back_to_the_hour_whose_batches_can_spill_into_the_window():
    # A batch filed under 09 holds records up to, not including, 11:00.
    folders = prediction_log.hour_folders(
        datetime(2026, 12, 2, 10, 0, tzinfo=UTC), datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    )

    assert folders == [
        "date=2026-12-02/hour=09",
        "date=2026-12-02/hour=10",
        "date=2026-12-02/hour=11",
    ]


def test_hour_folders_cross_midnight_and_include_a_started_hour():
    folders = prediction_log.hour_folders(
        datetime(2026, 12, 1, 23, 30, tzinfo=UTC), datetime(2026, 12, 2, 0, 15, tzinfo=UTC)
    )

    assert folders == [
        "date=2026-12-01/hour=22",
        "date=2026-12-01/hour=23",
        "date=2026-12-02/hour=00",
    ]


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("model=title-recommender", "title-recommender"),
        ("model=title-recommender-shadow", "title-recommender-shadow"),
        ("model=", None),
        ("_SUCCESS", None),
        ("date=2026-12-02", None),
    ],
)
def test_model_of_folder(name, model):
    assert prediction_log.model_of_folder(name) == model
