"""The feature-freshness publisher against moto S3 and CloudWatch."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

BUCKET = "mlp-dev-curated-123456789012"
NAMESPACE = "MLPlatform/FeatureStore"
MEMBERS = "ml-platform-dev-member-features"
TITLES = "ml-platform-dev-title-features"
MEMBERS_KEY = "_runs/feature_ingestion/member-features.json"
TITLES_KEY = "_runs/feature_ingestion/title-features.json"
GROUPS = [
    {"name": MEMBERS, "marker_bucket": BUCKET, "marker_key": MEMBERS_KEY},
    {"name": TITLES, "marker_bucket": BUCKET, "marker_key": TITLES_KEY},
]
NOW = datetime(2024, 5, 11, 3, 15, tzinfo=UTC)
# 2024-05-10T23:59:59.999Z and 2024-05-09T23:59:59.999Z: 3 h 15 min and 27 h 15 min before NOW.
MEMBERS_NEWEST = 1715385599.999
TITLES_NEWEST = 1715299199.999
MEMBERS_AGE = NOW.timestamp() - MEMBERS_NEWEST
TITLES_AGE = NOW.timestamp() - TITLES_NEWEST


def marker(group: str, records: int, newest: float) -> dict:
    """A marker as the batch ingestion job writes it."""
    return {
        "feature_group": group,
        "run_date": datetime.fromtimestamp(newest, UTC).date().isoformat(),
        "records": records,
        "newest_event_time": newest,
        "ingested_at": "2024-05-11T02:10:00.000Z",
    }


@pytest.fixture
def freshness_env(monkeypatch, aws_client) -> None:
    aws_client("s3").create_bucket(Bucket=BUCKET)
    monkeypatch.setenv("FEATURE_GROUPS", json.dumps(GROUPS))
    monkeypatch.setenv("METRIC_NAMESPACE", NAMESPACE)


@pytest.fixture
def freshness(freshness_env, load_handler, monkeypatch) -> ModuleType:
    module = load_handler("feature_freshness")
    monkeypatch.setattr(module, "clock", lambda: NOW)
    return module


@pytest.fixture
def put_marker(aws_client) -> Callable[[str, bytes | dict], None]:
    def put(key: str, body: bytes | dict) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        aws_client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)

    return put


@pytest.fixture
def datapoints(aws_client) -> Callable[[str, str], list[dict]]:
    """The datapoints of one metric of one feature group around NOW."""

    def query(metric: str, group: str) -> list[dict]:
        return aws_client("cloudwatch").get_metric_statistics(
            Namespace=NAMESPACE,
            MetricName=metric,
            Dimensions=[{"Name": "FeatureGroup", "Value": group}],
            StartTime=NOW - timedelta(hours=1),
            EndTime=NOW + timedelta(hours=1),
            Period=60,
            Statistics=["SampleCount", "Minimum", "Maximum"],
        )["Datapoints"]

    return query


@pytest.fixture
def published(aws_client) -> Callable[[], list[tuple[str, tuple]]]:
    """Every metric of the namespace, as (name, dimensions)."""

    def list_metrics() -> list[tuple[str, tuple]]:
        metrics = aws_client("cloudwatch").list_metrics(Namespace=NAMESPACE)["Metrics"]
        return sorted(
            (
                metric["MetricName"],
                tuple((d["Name"], d["Value"]) for d in metric["Dimensions"]),
            )
            for metric in metrics
        )

    return list_metrics


def one_point(value: float, unit: str) -> list[dict]:
    return [
        {
            "Timestamp": NOW,
            "SampleCount": 1.0,
            "Minimum": value,
            "Maximum": value,
            "Unit": unit,
        }
    ]


def test_publishes_the_age_and_records_of_every_group(
    freshness, put_marker, datapoints, published, lambda_context
):
    put_marker(MEMBERS_KEY, marker(MEMBERS, 1_204, MEMBERS_NEWEST))
    put_marker(TITLES_KEY, marker(TITLES, 37, TITLES_NEWEST))

    result = freshness.handler({}, lambda_context)

    assert result == {"groups": {MEMBERS: MEMBERS_AGE, TITLES: TITLES_AGE}}
    assert (round(MEMBERS_AGE, 3), round(TITLES_AGE, 3)) == (11_700.001, 98_100.001)
    assert datapoints("FeatureAgeSeconds", MEMBERS) == one_point(MEMBERS_AGE, "Seconds")
    assert datapoints("FeatureAgeSeconds", TITLES) == one_point(TITLES_AGE, "Seconds")
    assert datapoints("RecordsIngested", MEMBERS) == one_point(1_204.0, "Count")
    assert datapoints("RecordsIngested", TITLES) == one_point(37.0, "Count")
    assert published() == [
        ("FeatureAgeSeconds", (("FeatureGroup", MEMBERS),)),
        ("FeatureAgeSeconds", (("FeatureGroup", TITLES),)),
        ("RecordsIngested", (("FeatureGroup", MEMBERS),)),
        ("RecordsIngested", (("FeatureGroup", TITLES),)),
    ]


def test_calls_only_get_object_and_put_metric_data(freshness, put_marker, lambda_context):
    put_marker(MEMBERS_KEY, marker(MEMBERS, 1, MEMBERS_NEWEST))
    put_marker(TITLES_KEY, marker(TITLES, 1, TITLES_NEWEST))
    calls: list[str] = []
    for client in (freshness.s3, freshness.cloudwatch):
        client.meta.events.register(
            "before-call", lambda model, **_: calls.append(f"{model.service_model}.{model.name}")
        )

    freshness.handler({}, lambda_context)

    assert sorted(calls) == [
        "ServiceModel(cloudwatch).PutMetricData",
        "ServiceModel(cloudwatch).PutMetricData",
        "ServiceModel(s3).GetObject",
        "ServiceModel(s3).GetObject",
    ]


def test_a_group_without_a_marker_gets_no_metrics(
    freshness, put_marker, datapoints, published, lambda_context, caplog
):
    put_marker(MEMBERS_KEY, marker(MEMBERS, 1_204, MEMBERS_NEWEST))

    result = freshness.handler({}, lambda_context)

    assert result == {"groups": {MEMBERS: MEMBERS_AGE, TITLES: None}}
    assert datapoints("FeatureAgeSeconds", TITLES) == []
    assert datapoints("RecordsIngested", TITLES) == []
    assert published() == [
        ("FeatureAgeSeconds", (("FeatureGroup", MEMBERS),)),
        ("RecordsIngested", (("FeatureGroup", MEMBERS),)),
    ]
    [warning] = [record for record in caplog.records if record.levelname == "WARNING"]
    assert warning.getMessage() == "No marker: nothing published"
    assert (warning.feature_group, warning.marker) == (TITLES, f"s3://{BUCKET}/{TITLES_KEY}")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not JSON: "),
        (b"\xff\xfe", "not JSON: "),
        (b"[]", "not a JSON object"),
        ({"feature_group": MEMBERS, "newest_event_time": MEMBERS_NEWEST}, "records must be"),
        ({**marker(MEMBERS, 1, MEMBERS_NEWEST), "records": "12"}, "records must be"),
        ({**marker(MEMBERS, 1, MEMBERS_NEWEST), "records": True}, "records must be"),
        ({**marker(MEMBERS, 1, MEMBERS_NEWEST), "records": -1}, "records must be"),
        ({**marker(MEMBERS, 1, MEMBERS_NEWEST), "newest_event_time": None}, "newest_event_time"),
        (
            {**marker(MEMBERS, 1, MEMBERS_NEWEST), "newest_event_time": "2024-05-10T23:59:59Z"},
            "newest_event_time must be epoch seconds, got '2024-05-10T23:59:59Z'",
        ),
        (
            b'{"feature_group": "' + MEMBERS.encode() + b'", "records": 1, '
            b'"newest_event_time": NaN}',
            "newest_event_time must be epoch seconds, got nan",
        ),
        (
            marker(TITLES, 1, MEMBERS_NEWEST),
            f"written for feature group {TITLES!r}, not {MEMBERS!r}",
        ),
    ],
)
def test_a_malformed_marker_fails_after_the_other_groups_were_published(
    freshness, put_marker, datapoints, published, lambda_context, body, problem
):
    # The bad marker belongs to the first group, so the good group comes after it.
    put_marker(MEMBERS_KEY, body)
    put_marker(TITLES_KEY, marker(TITLES, 37, TITLES_NEWEST))

    with pytest.raises(ValueError, match=r"^s3://") as error:
        freshness.handler({}, lambda_context)

    assert type(error.value).__name__ == "InvalidMarker"
    assert str(error.value).startswith(f"s3://{BUCKET}/{MEMBERS_KEY}: ")
    assert problem in str(error.value)
    assert datapoints("FeatureAgeSeconds", TITLES) == one_point(TITLES_AGE, "Seconds")
    assert published() == [
        ("FeatureAgeSeconds", (("FeatureGroup", TITLES),)),
        ("RecordsIngested", (("FeatureGroup", TITLES),)),
    ]


def test_names_every_malformed_marker(freshness, put_marker, published, lambda_context):
    put_marker(MEMBERS_KEY, b"")
    put_marker(TITLES_KEY, b"[]")

    with pytest.raises(ValueError, match=r"^s3://") as error:
        freshness.handler({}, lambda_context)

    assert str(error.value) == (
        f"s3://{BUCKET}/{MEMBERS_KEY}: not JSON: Expecting value: line 1 column 1 (char 0); "
        f"s3://{BUCKET}/{TITLES_KEY}: not a JSON object"
    )
    assert published() == []


def test_an_unreadable_marker_fails_after_the_other_groups_were_published(
    freshness_env, load_handler, monkeypatch, put_marker, published, lambda_context
):
    groups = [{**GROUPS[0], "marker_bucket": "mlp-dev-no-such-bucket"}, GROUPS[1]]
    monkeypatch.setenv("FEATURE_GROUPS", json.dumps(groups))
    freshness = load_handler("feature_freshness")
    monkeypatch.setattr(freshness, "clock", lambda: NOW)
    put_marker(TITLES_KEY, marker(TITLES, 37, TITLES_NEWEST))

    with pytest.raises(freshness.s3.exceptions.NoSuchBucket):
        freshness.handler({}, lambda_context)

    assert published() == [
        ("FeatureAgeSeconds", (("FeatureGroup", TITLES),)),
        ("RecordsIngested", (("FeatureGroup", TITLES),)),
    ]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("FEATURE_GROUPS", None, "FEATURE_GROUPS is not set"),
        ("FEATURE_GROUPS", "[{", "FEATURE_GROUPS is not valid JSON: "),
        ("FEATURE_GROUPS", "[]", "FEATURE_GROUPS must be a non-empty JSON list"),
        ("FEATURE_GROUPS", json.dumps(GROUPS[0]), "FEATURE_GROUPS must be a non-empty JSON list"),
        (
            "FEATURE_GROUPS",
            json.dumps([{"name": MEMBERS, "marker_bucket": BUCKET}]),
            "FEATURE_GROUPS[0] must be an object with exactly the keys name, marker_bucket, "
            "marker_key, got ",
        ),
        (
            "FEATURE_GROUPS",
            json.dumps([GROUPS[0], {**GROUPS[1], "marker_key": ""}]),
            "FEATURE_GROUPS[1].marker_key must be a non-empty string, got ''",
        ),
        (
            "FEATURE_GROUPS",
            json.dumps([GROUPS[0], {**GROUPS[1], "name": MEMBERS}]),
            f"FEATURE_GROUPS names must be unique, repeated: ['{MEMBERS}']",
        ),
        ("METRIC_NAMESPACE", None, "METRIC_NAMESPACE is not set"),
        ("METRIC_NAMESPACE", "", "METRIC_NAMESPACE is not set"),
        (
            "METRIC_NAMESPACE",
            "AWS/SageMaker",
            "METRIC_NAMESPACE is not a custom CloudWatch namespace: 'AWS/SageMaker'",
        ),
    ],
)
def test_refuses_to_start_with_a_bad_environment(
    freshness_env, load_handler, monkeypatch, variable, value, message
):
    if value is None:
        monkeypatch.delenv(variable)
    else:
        monkeypatch.setenv(variable, value)

    with pytest.raises(ValueError, match=r"^(FEATURE_GROUPS|METRIC_NAMESPACE)") as error:
        load_handler("feature_freshness")

    assert type(error.value).__name__ == "ConfigurationError"
    assert str(error.value).startswith(message)
