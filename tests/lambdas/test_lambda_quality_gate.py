"""The data-quality gate against a moto bucket."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

BUCKET = "mlp-dev-raw-123456789012"
PREFIX_TEMPLATE = "streaming/member_interactions/event_date={run_date}/"
DEAD_LETTER_TEMPLATE = "streaming/_dead_letter/member_interactions/ingest_date={run_date}/"
PREFIX = "streaming/member_interactions/event_date=2026-11-28/"
DEAD_LETTER_PREFIX = "streaming/_dead_letter/member_interactions/ingest_date=2026-11-28/"


@pytest.fixture
def gate(aws_client, load_handler) -> ModuleType:
    aws_client("s3").create_bucket(Bucket=BUCKET)
    return load_handler("quality_gate")


@pytest.fixture
def put(aws_client) -> Callable[[str, int], None]:
    """Puts an object of `size` bytes at `key` in the bucket."""

    def put_object(key: str, size: int) -> None:
        aws_client("s3").put_object(Bucket=BUCKET, Key=key, Body=b"x" * size)

    return put_object


def gate_event(**overrides) -> dict:
    return {
        "run_date": "2026-11-28",
        "execution_start_time": "2026-11-29T03:00:00.123Z",
        "bucket": BUCKET,
        "prefix_template": PREFIX_TEMPLATE,
        "min_objects": 1,
        "min_bytes": 1,
        **overrides,
    }


def test_passes_and_counts_only_the_run_dates_objects(gate, put, lambda_context):
    put(f"{PREFIX}event_hour=00/part-0.json", 100)
    put(f"{PREFIX}event_hour=01/part-0.json", 250)
    put(f"{PREFIX}event_hour=01/part-1.json", 7)
    put(PREFIX, 0)  # a console "folder": not data
    put("streaming/member_interactions/event_date=2026-11-27/event_hour=23/part-0.json", 999)
    put("streaming/member_interactions/event_date=2026-11-280/part-0.json", 999)

    result = gate.handler(gate_event(min_objects=3, min_bytes=357), lambda_context)

    assert result == {
        "run_date": "2026-11-28",
        "passed": True,
        "objects": 3,
        "bytes": 357,
        "dead_letter_objects": None,
        "dead_letter_ratio": None,
        "prefix": PREFIX,
    }


@pytest.mark.parametrize(
    ("start_time", "run_date"),
    [
        ("2026-11-29T03:00:00.123Z", "2026-11-28"),
        ("2026-11-29T00:00:00Z", "2026-11-28"),
        ("2026-03-01T23:59:59.999Z", "2026-02-28"),
        # 22:30 UTC on the 28th, so the day before is the 27th.
        ("2026-11-29T00:30:00+02:00", "2026-11-27"),
    ],
)
@pytest.mark.parametrize("absent", [True, False])
def test_run_date_defaults_to_the_utc_day_before_the_execution(
    gate, put, lambda_context, start_time, run_date, absent
):
    put(f"streaming/member_interactions/event_date={run_date}/part-0.json", 5)
    event = gate_event(execution_start_time=start_time)
    if absent:
        del event["run_date"]
    else:
        event["run_date"] = None

    result = gate.handler(event, lambda_context)

    assert result["run_date"] == run_date
    assert result["prefix"] == f"streaming/member_interactions/event_date={run_date}/"
    assert (result["objects"], result["bytes"]) == (1, 5)


def test_lists_every_page(gate, put, lambda_context):
    for number in range(5):
        put(f"{PREFIX}part-{number}.json", 2 + number)
    pages: list[dict] = []

    def two_keys_a_page(params, **_):
        params["MaxKeys"] = 2
        pages.append(dict(params))

    # S3 pages at 1,000 keys; two keys a page shows the paging with five objects.
    gate.s3.meta.events.register("provide-client-params.s3.ListObjectsV2", two_keys_a_page)

    result = gate.handler(gate_event(), lambda_context)

    assert (result["objects"], result["bytes"]) == (5, 20)
    assert len(pages) == 3
    assert [page.get("ContinuationToken") is None for page in pages] == [True, False, False]


def test_calls_nothing_but_list_objects(gate, put, lambda_context):
    put(f"{PREFIX}part-0.json", 10)
    put(f"{DEAD_LETTER_PREFIX}part-0.json", 10)
    operations: list[str] = []
    gate.s3.meta.events.register("before-call.s3", lambda model, **_: operations.append(model.name))

    gate.handler(
        gate_event(dead_letter_prefix_template=DEAD_LETTER_TEMPLATE, max_dead_letter_ratio=0.5),
        lambda_context,
    )

    # s3:ListBucket is the only permission the function has.
    assert operations == ["ListObjectsV2", "ListObjectsV2"]


def test_fails_on_an_empty_partition(gate, lambda_context):
    with pytest.raises(gate.QualityGateFailed) as failure:
        gate.handler(gate_event(), lambda_context)

    assert type(failure.value).__name__ == "QualityGateFailed"
    assert str(failure.value) == (
        f"s3://{BUCKET}/{PREFIX}: 0 objects, need at least 1; "
        f"s3://{BUCKET}/{PREFIX}: 0 bytes, need at least 1"
    )


def test_fails_on_too_few_objects_or_bytes(gate, put, lambda_context):
    put(f"{PREFIX}part-0.json", 40)
    put(f"{PREFIX}part-1.json", 59)

    with pytest.raises(gate.QualityGateFailed) as too_few_objects:
        gate.handler(gate_event(min_objects=3, min_bytes=99), lambda_context)
    with pytest.raises(gate.QualityGateFailed) as too_few_bytes:
        gate.handler(gate_event(min_objects=2, min_bytes=100), lambda_context)

    assert str(too_few_objects.value) == f"s3://{BUCKET}/{PREFIX}: 2 objects, need at least 3"
    assert str(too_few_bytes.value) == f"s3://{BUCKET}/{PREFIX}: 99 bytes, need at least 100"


def test_zero_thresholds_pass_an_empty_partition(gate, lambda_context):
    result = gate.handler(gate_event(min_objects=0, min_bytes=0), lambda_context)

    assert (result["passed"], result["objects"], result["bytes"]) == (True, 0, 0)


def test_thresholds_default_to_one_object_and_one_byte(gate, put, lambda_context):
    event = gate_event()
    del event["min_objects"], event["min_bytes"]

    with pytest.raises(gate.QualityGateFailed, match="0 objects, need at least 1"):
        gate.handler(event, lambda_context)
    put(f"{PREFIX}part-0.json", 1)
    assert gate.handler(event, lambda_context)["passed"] is True


def test_dead_letter_ratio_within_the_limit(gate, put, lambda_context):
    for number in range(19):
        put(f"{PREFIX}part-{number}.json", 10)
    put(f"{DEAD_LETTER_PREFIX}part-0.json", 3)
    put("streaming/_dead_letter/member_interactions/ingest_date=2026-11-27/part-0.json", 3)

    result = gate.handler(
        gate_event(dead_letter_prefix_template=DEAD_LETTER_TEMPLATE, max_dead_letter_ratio=0.05),
        lambda_context,
    )

    assert result == {
        "run_date": "2026-11-28",
        "passed": True,
        "objects": 19,
        "bytes": 190,
        "dead_letter_objects": 1,
        "dead_letter_ratio": 0.05,
        "prefix": PREFIX,
    }


def test_dead_letter_ratio_over_the_limit(gate, put, lambda_context):
    for number in range(10):
        put(f"{PREFIX}part-{number}.json", 10)
    put(f"{DEAD_LETTER_PREFIX}part-0.json", 3)

    with pytest.raises(gate.QualityGateFailed) as failure:
        gate.handler(
            gate_event(
                dead_letter_prefix_template=DEAD_LETTER_TEMPLATE, max_dead_letter_ratio=0.05
            ),
            lambda_context,
        )

    assert str(failure.value) == (
        f"s3://{BUCKET}/{DEAD_LETTER_PREFIX}: dead-letter ratio 0.0909 "
        "(1 dead-letter of 11 objects) exceeds 0.05"
    )


def test_dead_letters_only_fail_both_checks(gate, put, lambda_context):
    put(f"{DEAD_LETTER_PREFIX}part-0.json", 3)

    with pytest.raises(gate.QualityGateFailed) as failure:
        gate.handler(
            gate_event(dead_letter_prefix_template=DEAD_LETTER_TEMPLATE, max_dead_letter_ratio=1),
            lambda_context,
        )

    # A ratio of exactly 1 is within a limit of 1; only the empty partition fails.
    assert str(failure.value) == (
        f"s3://{BUCKET}/{PREFIX}: 0 objects, need at least 1; "
        f"s3://{BUCKET}/{PREFIX}: 0 bytes, need at least 1"
    )


def test_dead_letter_ratio_is_zero_when_nothing_arrived(gate, lambda_context):
    result = gate.handler(
        gate_event(
            min_objects=0,
            min_bytes=0,
            dead_letter_prefix_template=DEAD_LETTER_TEMPLATE,
            max_dead_letter_ratio=0,
        ),
        lambda_context,
    )

    assert (result["dead_letter_objects"], result["dead_letter_ratio"]) == (0, 0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bucket": None}, "bucket must be a non-empty string, got None"),
        ({"bucket": ""}, "bucket must be a non-empty string, got ''"),
        ({"run_date": "2026-02-30"}, "run_date is not a calendar date: '2026-02-30'"),
        ({"run_date": "2026/11/28"}, "run_date must be a YYYY-MM-DD string, got '2026/11/28'"),
        ({"run_date": "20261128"}, "run_date must be a YYYY-MM-DD string, got '20261128'"),
        ({"run_date": 20261128}, "run_date must be a YYYY-MM-DD string, got 20261128"),
        (
            {"run_date": None, "execution_start_time": None},
            "execution_start_time must be a non-empty string, got None",
        ),
        (
            {"run_date": None, "execution_start_time": "yesterday"},
            "execution_start_time must be an ISO 8601 timestamp, got 'yesterday'",
        ),
        (
            {"run_date": None, "execution_start_time": "2026-11-29T03:00:00"},
            "execution_start_time must carry a UTC offset, got '2026-11-29T03:00:00'",
        ),
        (
            {"prefix_template": "streaming/member_interactions/"},
            "prefix_template must contain {run_date} and no other placeholder, "
            "got 'streaming/member_interactions/'",
        ),
        (
            {"prefix_template": "streaming/{table}/event_date={run_date}/"},
            "prefix_template must contain {run_date} and no other placeholder, "
            "got 'streaming/{table}/event_date={run_date}/'",
        ),
        (
            {"prefix_template": "event_date={run_date/"},
            "prefix_template is not a valid template: expected '}' before end of string",
        ),
        ({"prefix_template": None}, "prefix_template must be a non-empty string, got None"),
        ({"min_objects": -1}, "min_objects must be a non-negative integer, got -1"),
        ({"min_bytes": -5}, "min_bytes must be a non-negative integer, got -5"),
        ({"min_bytes": 1.5}, "min_bytes must be a non-negative integer, got 1.5"),
        ({"min_objects": True}, "min_objects must be a non-negative integer, got True"),
        (
            {"dead_letter_prefix_template": DEAD_LETTER_TEMPLATE, "max_dead_letter_ratio": 1.5},
            "max_dead_letter_ratio must be a number between 0 and 1, got 1.5",
        ),
        (
            {"dead_letter_prefix_template": DEAD_LETTER_TEMPLATE, "max_dead_letter_ratio": -0.1},
            "max_dead_letter_ratio must be a number between 0 and 1, got -0.1",
        ),
        (
            {"dead_letter_prefix_template": DEAD_LETTER_TEMPLATE, "max_dead_letter_ratio": "0.1"},
            "max_dead_letter_ratio must be a number between 0 and 1, got '0.1'",
        ),
        (
            {"dead_letter_prefix_template": "streaming/_dead_letter/", "max_dead_letter_ratio": 0},
            "dead_letter_prefix_template must contain {run_date} and no other placeholder, "
            "got 'streaming/_dead_letter/'",
        ),
        (
            {"dead_letter_prefix_template": DEAD_LETTER_TEMPLATE},
            "dead_letter_prefix_template and max_dead_letter_ratio must be given together",
        ),
        (
            {"max_dead_letter_ratio": 0.05},
            "dead_letter_prefix_template and max_dead_letter_ratio must be given together",
        ),
    ],
)
def test_rejects_invalid_input(gate, put, lambda_context, overrides, message):
    put(f"{PREFIX}part-0.json", 10)

    with pytest.raises(gate.InvalidInput) as error:
        gate.handler(gate_event(**overrides), lambda_context)

    assert type(error.value).__name__ == "InvalidInput"
    assert str(error.value) == message


def test_rejects_input_that_is_not_an_object(gate, lambda_context):
    with pytest.raises(gate.InvalidInput) as error:
        gate.handler(["2026-11-28"], lambda_context)

    assert str(error.value) == "the input must be a JSON object, got list"
