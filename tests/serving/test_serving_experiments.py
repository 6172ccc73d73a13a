"""ABlaze -> serving: the running experiments of DynamoDB (in moto) assign members to cells.

One experiment runs on the surface ``title-recommender``: ``control`` (40 %, version 7, the
primary), ``treatment`` (40 %, version 8, the candidate) and 20 % not enrolled. Its salt is
fixed so that m0 is in control, m1 in treatment and m2 in no cell.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws
from serving_helpers import BASE_ENVIRONMENT, LOAD_TIMEOUT_SECONDS, PRIMARY_RANKING

from ablaze.allocation import LOGGER as ABLAZE_LOGGER
from ablaze.allocation import bucket_of
from ablaze.experiments import ExperimentSpec, create_experiment, started
from ablaze.store import SURFACE_INDEX, ExperimentStore
from serving.recommender_service.app import ablaze_cell_assigner
from serving.recommender_service.experiments import NoExperiments
from serving.recommender_service.logs import LOGGER, configure_logging
from serving.recommender_service.settings import Settings, read_settings

if TYPE_CHECKING:
    from serving_helpers import RunningApp, StartApp

TABLE = "mlp-dev-experiments"
BUCKET = "mlp-dev-monitoring-123456789012-us-east-1"
SURFACE = "title-recommender"
EXPERIMENT = "ranker-test"
SALT = "00000000000000000000000000000007"
EXPERIMENT_ENV = {"EXPERIMENTS_TABLE": TABLE, "EXPERIMENT_SURFACE": SURFACE}
PRIMARY = {"ModelName": "title-recommender", "ModelVersion": "7"}
CANDIDATE = {"ModelName": "title-recommender", "ModelVersion": "8"}
# The candidate gives m1 the vector m0 has in the primary model, and m1 has no history.
CANDIDATE_RANKING_OF_M1 = ["t0", "t4"]
MEMBERS = ("m0", "m1", "m2")


@pytest.fixture
def aws() -> Iterator[Any]:
    """moto's DynamoDB with the experiments table, and the prediction log's bucket."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_experiments_table(client)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def start_experiment_app(aws: Any, start_app: StartApp, candidate_dir: Path) -> StartApp:
    """``start_app`` reading the experiments table, with the candidate and every member shadowed.

    Depends on ``aws`` first, so the app stops before the mock does.
    """

    def start(*, env: dict[str, str] | None = None, **kwargs: Any) -> RunningApp:
        environment = {
            **EXPERIMENT_ENV,
            "CANDIDATE_MODEL_VERSION": "8",
            "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir),
            "SHADOW_FRACTION": "1",
            "PREDICTION_LOG_URI": f"s3://{BUCKET}/predictions/",
            **(env or {}),
        }
        return start_app(env=environment, **kwargs)

    return start


def create_experiments_table(client: Any) -> None:
    """The experiments table as ablaze/store.py's docstring describes it."""
    client.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "experiment_id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("experiment_id", "surface", "state")
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": SURFACE_INDEX,
                "KeySchema": [
                    {"AttributeName": "surface", "KeyType": "HASH"},
                    {"AttributeName": "state", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )


def run_experiment(client: Any) -> None:
    """Create the experiment of the module docstring and start it, as ABlaze's API does."""
    spec = ExperimentSpec.model_validate(
        {
            "id": EXPERIMENT,
            "surface": SURFACE,
            "cells": [
                {"name": "control", "percent": 40, "model_version": "7", "control": True},
                {"name": "treatment", "percent": 40, "model_version": "8"},
            ],
            "start": "2020-01-01T00:00:00Z",
            "end": "2100-01-01T00:00:00Z",
            "primary_metric": "play_rate",
        }
    )
    now = datetime.now(UTC)
    draft = create_experiment(spec, now=now).model_copy(update={"salt": SALT})
    store = ExperimentStore(client=client, table_name=TABLE)
    store.create(draft)
    store.save(started(draft, now=now), previous=draft)


def logged_lines() -> list[dict]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return [
        json.loads(line)
        for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        for line in gzip.decompress(
            s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        ).splitlines()
    ]


def cells(records: list[Any]) -> set[tuple[str, str, str, str | None, str | None]]:
    """(member, model name, version, experiment, cell) of prediction records or log lines."""

    def field(record: Any, name: str) -> Any:
        return record[name] if isinstance(record, dict) else getattr(record, name)

    return {
        tuple(
            field(record, name)
            for name in ("member_id", "model_name", "model_version", "experiment", "cell")
        )
        for record in records
    }


def test_the_fixed_salt_puts_the_members_where_the_tests_expect() -> None:
    buckets = [bucket_of(salt=SALT, experiment_id=EXPERIMENT, member_id=m) for m in MEMBERS]
    assert buckets[0] < 4000 <= buckets[1] < 8000 <= buckets[2]


def test_the_running_experiment_assigns_serves_and_records_cells(
    start_experiment_app: StartApp, aws: Any
) -> None:
    run_experiment(aws)
    running = start_experiment_app()
    control, treatment, outside = (running.recommend(m, k=2) for m in MEMBERS)
    assert (control["experiment"], control["cell"], control["model_version"]) == (
        EXPERIMENT,
        "control",
        "7",
    )
    # m0 saw t0, which the primary ranks first.
    assert [item["title_id"] for item in control["items"]] == PRIMARY_RANKING["m0"][1:3]
    assert (treatment["experiment"], treatment["cell"], treatment["model_version"]) == (
        EXPERIMENT,
        "treatment",
        "8",
    )
    assert [item["title_id"] for item in treatment["items"]] == CANDIDATE_RANKING_OF_M1
    assert (outside["experiment"], outside["cell"], outside["model_version"]) == (None, None, "7")
    running.drain()
    shadow = "title-recommender:shadow"
    expected = {
        ("m0", "title-recommender", "7", EXPERIMENT, "control"),
        ("m1", "title-recommender", "8", EXPERIMENT, "treatment"),
        ("m2", "title-recommender", "7", None, None),
        # The candidate answered m1 for its cell, so only the others are shadow-scored.
        ("m0", shadow, "8", None, None),
        ("m2", shadow, "8", None, None),
    }
    assert running.store is not None
    assert cells(running.store.predictions) == expected
    assert cells(logged_lines()) == expected
    exposure = {"Experiment": EXPERIMENT}
    assert running.metric_values("Exposure", **PRIMARY, **exposure, Cell="control") == [1.0]
    assert running.metric_values("Exposure", **CANDIDATE, **exposure, Cell="treatment") == [1.0]
    assert running.metric_values("ExperimentVersionUnavailable", **PRIMARY) == []


def test_without_a_running_experiment_nobody_is_in_a_cell(start_experiment_app: StartApp) -> None:
    running = start_experiment_app()
    assert {running.recommend(m, k=1)["experiment"] for m in MEMBERS} == {None}


class _Signal(logging.Handler):
    """Sets ``event`` on the ``count``-th record it handles."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.event = threading.Event()
        self._left = count

    def emit(self, record: logging.LogRecord) -> None:
        self._left -= 1
        if self._left <= 0:
            self.event.set()


@pytest.fixture
def reload_failures() -> Iterator[_Signal]:
    """Signals the second failed reload of the experiments, so the first one has finished."""
    signal = _Signal(count=2)
    ABLAZE_LOGGER.addHandler(signal)
    yield signal
    ABLAZE_LOGGER.removeHandler(signal)


def test_a_failed_reload_keeps_serving_the_last_experiments(
    start_experiment_app: StartApp,
    aws: Any,
    reload_failures: _Signal,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_experiment(aws)
    running = start_experiment_app(env={"EXPERIMENTS_REFRESH_SECONDS": "0.02"})
    assert running.recommend("m1", k=1)["cell"] == "treatment"
    aws.delete_table(TableName=TABLE)
    assert reload_failures.event.wait(LOAD_TIMEOUT_SECONDS)
    assert "cannot reload experiments; keeping the 1 loaded" in caplog.text
    assert running.recommend("m1", k=1)["cell"] == "treatment"
    assert running.recommend("m0", k=1)["cell"] == "control"


def test_a_table_that_cannot_be_read_leaves_the_service_ready_without_experiments(
    start_experiment_app: StartApp, aws: Any, caplog: pytest.LogCaptureFixture
) -> None:
    aws.delete_table(TableName=TABLE)
    running = start_experiment_app()
    assert running.client.get("/health/ready").status_code == 200
    assert running.recommend("m1", k=1)["experiment"] is None
    assert "cannot reload experiments; keeping the 0 loaded" in caplog.text


def test_without_the_table_setting_nobody_is_assigned() -> None:
    settings = read_settings({**BASE_ENVIRONMENT, "MODEL_ARTIFACT_URI": "/opt/model"})
    assert isinstance(settings, Settings)
    assert isinstance(ablaze_cell_assigner(settings), NoExperiments)


def test_ablazes_log_lines_go_where_the_services_go(capsys: pytest.CaptureFixture) -> None:
    configure_logging()
    try:
        ABLAZE_LOGGER.error("cannot reload experiments")
        LOGGER.info("ready")
    finally:
        for logger in (LOGGER, ABLAZE_LOGGER):
            for handler in logger.handlers[:]:
                logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "ERROR ablaze cannot reload experiments",
        "INFO recommender_service ready",
    ]
