"""The prediction log: every prediction record, batched into gzip JSON Lines objects in S3."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws
from serving_helpers import LOAD_TIMEOUT_SECONDS, TITLE_POSITIVES, TITLES, SlowStore

from serving.recommender_service import service as service_module
from serving.recommender_service.model_source import load_ranker
from serving.recommender_service.prediction_log import (
    LoggedPrediction,
    PredictionLog,
    log_line,
    object_key,
)
from serving.recommender_service.settings import split_s3_folder
from serving.recommender_service.store import InMemoryStore, PredictionRecord

if TYPE_CHECKING:
    from serving_helpers import RunningApp, StartApp

BUCKET = "mlp-dev-monitoring-123456789012-us-east-1"
LOG_ENV = {"PREDICTION_LOG_URI": f"s3://{BUCKET}/predictions/"}
DIMENSIONS = {"ModelName": "title-recommender", "ModelVersion": "7"}
KEY = re.compile(
    r"predictions/model=(?P<model>[^/]+)/date=(?P<date>\d{4}-\d\d-\d\d)/hour=(?P<hour>\d\d)/"
    r"[0-9a-f]{32}\.jsonl\.gz"
)
GENERATED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def start_logging_app(s3: Any, start_app: StartApp) -> StartApp:
    """``start_app`` with the prediction log in the mocked bucket.

    Depends on ``s3`` first, so the app (and its last writes) stops before the mock does.
    """

    def start(*, env: dict[str, str] | None = None, **kwargs: Any) -> RunningApp:
        return start_app(env={**LOG_ENV, **(env or {})}, **kwargs)

    return start


def logged_objects(s3: Any) -> dict[str, list[dict]]:
    """Every object in the bucket, as the JSON objects of its lines."""
    objects = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {
        item["Key"]: [
            json.loads(line)
            for line in gzip.decompress(
                s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            ).splitlines()
        ]
        for item in objects
    }


def by_model(s3: Any) -> dict[str, list[dict]]:
    """The logged lines under each ``model=`` partition, checking every key's layout."""
    lines: dict[str, list[dict]] = {}
    for key, records in logged_objects(s3).items():
        match = KEY.fullmatch(key)
        assert match, key
        lines.setdefault(match["model"], []).extend(records)
    return lines


def counted(running: RunningApp, name: str) -> float:
    return sum(running.metric_values(name, **DIMENSIONS))


def record_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once the prediction log has put a batch."""
    written = threading.Event()
    write = PredictionLog.write

    def write_and_tell(self: PredictionLog, entries: list[LoggedPrediction]) -> list:
        lost = write(self, entries)
        written.set()
        return lost

    monkeypatch.setattr(PredictionLog, "write", write_and_tell)
    return written


def test_answers_are_logged_at_shutdown_as_gzip_json_lines(
    start_logging_app: StartApp, s3: Any, model_dir: Path
) -> None:
    running = start_logging_app()
    running.recommend("m0", k=2)
    running.recommend("newcomer", k=1)
    running.recommend("m1", k=1)
    # Far from a full batch and from the flush interval: nothing is put before shutdown.
    assert logged_objects(s3) == {}
    running.drain()
    [(key, lines)] = logged_objects(s3).items()
    match = KEY.fullmatch(key)
    assert match, key
    first = datetime.fromisoformat(lines[0]["generated_at"])
    assert (match["model"], match["date"], match["hour"]) == (
        "title-recommender",
        f"{first:%Y-%m-%d}",
        f"{first:%H}",
    )
    # The table's record and the log's line share the time the answer was generated.
    assert running.store is not None
    table_time = running.store.predictions[0].generated_at
    assert lines[0]["generated_at"] == table_time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert all(GENERATED_AT.fullmatch(line.pop("generated_at")) for line in lines)
    served = {
        "model_name": "title-recommender",
        "model_version": "7",
        "model_artifact_uri": str(model_dir),
        "experiment": None,
        "cell": None,
    }
    assert lines == [
        {
            "member_id": "m0",
            **served,
            "title_ids": ["t4", "t1"],
            "scores": pytest.approx([0.7, 0.5]),
            "fallback": None,
            "inputs": {"history_length": 1.0, "history_popularity": pytest.approx(math.log1p(5))},
        },
        {
            "member_id": "newcomer",
            **served,
            "title_ids": ["t3"],
            "scores": [9.0],
            "fallback": "popularity",
            # t1 has 9 training positives; the retired title is unknown to the model.
            "inputs": {"history_length": 2.0, "history_popularity": pytest.approx(math.log(10))},
        },
        {
            "member_id": "m1",
            **served,
            "title_ids": ["t2"],
            "scores": pytest.approx([0.9]),
            "fallback": None,
            "inputs": {"history_length": 0.0, "history_popularity": None},
        },
    ]
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert (head["ServerSideEncryption"], head.get("SSEKMSKeyId")) == ("aws:kms", None)


def test_shadow_rankings_are_logged_under_the_shadow_model_name(
    start_logging_app: StartApp, s3: Any, candidate_dir: Path
) -> None:
    running = start_logging_app(
        env={
            "CANDIDATE_MODEL_VERSION": "8",
            "CANDIDATE_MODEL_ARTIFACT_URI": str(candidate_dir),
            "SHADOW_FRACTION": "1",
        }
    )
    running.recommend("m0", k=2)
    running.recommend("stranger", k=1)
    running.drain()
    lines = by_model(s3)
    assert set(lines) == {"title-recommender", "title-recommender:shadow"}
    shadow = [
        {name: line[name] for name in ("member_id", "model_name", "model_version", "title_ids")}
        | {name: line[name] for name in ("model_artifact_uri", "fallback", "inputs")}
        for line in lines["title-recommender:shadow"]
    ]
    m0_inputs = {"history_length": 1.0, "history_popularity": pytest.approx(math.log1p(5))}
    assert shadow == [
        {
            "member_id": "m0",
            "model_name": "title-recommender:shadow",
            "model_version": "8",
            "title_ids": ["t2", "t5"],
            "model_artifact_uri": str(candidate_dir),
            "fallback": None,
            "inputs": m0_inputs,
        },
        {
            "member_id": "stranger",
            "model_name": "title-recommender:shadow",
            "model_version": "8",
            "title_ids": ["t1"],
            "model_artifact_uri": str(candidate_dir),
            "fallback": "popularity",
            "inputs": {"history_length": 0.0, "history_popularity": None},
        },
    ]
    assert [line["model_version"] for line in lines["title-recommender"]] == ["7", "7"]


@pytest.mark.parametrize(
    ("store", "env", "member", "fallback"),
    [
        pytest.param(
            SlowStore(error=ConnectionError("no host available")),
            {},
            "m0",
            "store_unavailable",
            id="failing",
        ),
        pytest.param(
            SlowStore(delay=5.0), {"STORE_TIMEOUT_MS": "20"}, "m0", "store_timeout", id="slow"
        ),
        pytest.param(None, {}, "m0", "store_unavailable", id="not-configured"),
        # The answer names popularity, yet its history was not read either.
        pytest.param(
            SlowStore(error=ConnectionError("no host available")),
            {},
            "newcomer",
            "popularity",
            id="unknown-member-failing",
        ),
    ],
)
def test_inputs_are_null_when_the_history_could_not_be_read(
    start_logging_app: StartApp,
    s3: Any,
    store: InMemoryStore | None,
    env: dict[str, str],
    member: str,
    fallback: str,
) -> None:
    running = start_logging_app(env=env, store=store)
    running.recommend(member, k=1)
    running.drain()
    [line] = by_model(s3)["title-recommender"]
    assert (line["member_id"], line["fallback"], line["inputs"]) == (member, fallback, None)


def test_a_failed_put_is_counted_and_the_table_still_gets_its_records(
    start_logging_app: StartApp, s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    missing = "mlp-dev-no-such-bucket"
    running = start_logging_app(env={"PREDICTION_LOG_URI": f"s3://{missing}/predictions/"})
    running.recommend("m0", k=1)
    running.recommend("m1", k=1)
    running.drain()
    assert counted(running, "PredictionLogWriteError") == 2
    assert running.store is not None
    assert [record.member_id for record in running.store.predictions] == ["m0", "m1"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(
        f"prediction log: cannot put s3://{missing}/predictions/model=title-recommender/date="
    )
    assert ", its 2 records are lost: NoSuchBucket: An error occurred (NoSuchBucket)" in warning
    assert "\n" not in warning


def test_a_full_log_queue_drops_and_counts(
    start_logging_app: StartApp, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "LOG_QUEUE_CAPACITY", 1)
    running = start_logging_app()
    for member in ("m0", "m1", "newcomer"):
        running.recommend(member, k=1)
    # The first record waits for the flush interval; the queue holds no second one.
    assert counted(running, "PredictionLogDropped") == 2
    running.drain()
    assert [line["member_id"] for line in by_model(s3)["title-recommender"]] == ["m0"]
    assert running.store is not None
    assert len(running.store.predictions) == 3


def test_a_full_batch_is_put_without_waiting_for_the_interval(
    start_logging_app: StartApp, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "LOG_BATCH_RECORDS", 2)
    written = record_writes(monkeypatch)
    running = start_logging_app()
    running.recommend("m0", k=1)
    running.recommend("m1", k=1)
    assert written.wait(LOAD_TIMEOUT_SECONDS)
    [lines] = logged_objects(s3).values()
    assert [line["member_id"] for line in lines] == ["m0", "m1"]
    running.recommend("newcomer", k=1)
    running.drain()
    assert sorted(len(lines) for lines in logged_objects(s3).values()) == [1, 2]


def test_a_batch_is_put_once_the_flush_interval_has_passed(
    start_logging_app: StartApp, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = record_writes(monkeypatch)
    running = start_logging_app(env={"PREDICTION_LOG_FLUSH_SECONDS": "0.05"})
    running.recommend("m0", k=1)
    assert written.wait(LOAD_TIMEOUT_SECONDS)
    assert [line["member_id"] for line in by_model(s3)["title-recommender"]] == ["m0"]


def entry(member_id: str, model_name: str, scores: list[float], at: datetime) -> LoggedPrediction:
    record = PredictionRecord(
        member_id=member_id,
        model_name=model_name,
        model_version="7",
        title_ids=["t0"],
        scores=scores,
        generated_at=at,
        experiment="exp-1",
        cell="treatment",
    )
    return LoggedPrediction(
        record=record,
        model_artifact_uri="s3://models/7/model.tar.gz",
        fallback=None,
        history=["t0"],
        title_positives={"t0": 5},
    )


def test_times_are_utc_to_the_millisecond() -> None:
    paris_winter = timezone(timedelta(hours=1))
    at = datetime(2026, 12, 2, 18, 0, 0, 123999, tzinfo=paris_winter)
    line = log_line(entry("m0", "title-recommender", [0.5], at))
    assert line["generated_at"] == "2026-12-02T17:00:00.123Z"
    assert list(line) == [
        "member_id",
        "model_name",
        "model_version",
        "model_artifact_uri",
        "generated_at",
        "title_ids",
        "scores",
        "fallback",
        "experiment",
        "cell",
        "inputs",
    ]
    assert (line["experiment"], line["cell"]) == ("exp-1", "treatment")
    key = object_key("predictions/", model_name="title-recommender", first_at=at)
    assert key.startswith("predictions/model=title-recommender/date=2026-12-02/hour=17/")
    just_before_midnight = datetime(2026, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert "/date=2026-12-31/hour=23/" in object_key(
        "", model_name="m", first_at=just_before_midnight
    )


def test_an_object_that_cannot_be_written_loses_only_its_own_records(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    at = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
    served = entry("m0", "title-recommender", [0.5], at)
    # Strict JSON has no NaN: the shadow object cannot be written, the served one still is.
    broken = entry("m0", "title-recommender:shadow", [math.nan], at)
    prediction_log = PredictionLog(s3_client=s3, bucket=BUCKET, prefix="")
    assert prediction_log.write([served, broken]) == [broken]
    [(key, [line])] = logged_objects(s3).items()
    assert key.startswith("model=title-recommender/date=2026-12-02/hour=17/")
    assert line["scores"] == [0.5]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(
        f"prediction log: cannot put s3://{BUCKET}/model=title-recommender:shadow/date=2026-12-02/"
    )
    assert warning.endswith(
        ", its 1 records are lost: ValueError: Out of range float values are not JSON compliant"
    )


def test_the_log_may_be_at_the_root_of_its_bucket() -> None:
    assert split_s3_folder(f"s3://{BUCKET}/") == (BUCKET, "")
    assert split_s3_folder(f"s3://{BUCKET}/a/b/") == (BUCKET, "a/b/")
    assert split_s3_folder(f"s3://{BUCKET}/a b/") is None


def test_the_ranker_gives_title_positives_by_id(model_dir: Path) -> None:
    positives = load_ranker(str(model_dir)).title_positives
    assert dict(positives) == dict(zip(TITLES, TITLE_POSITIVES, strict=True))
    with pytest.raises(TypeError):
        positives["t0"] = 1  # type: ignore[index]
