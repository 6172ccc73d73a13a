"""The data-availability trigger against a moto Step Functions state machine."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from types import ModuleType

import pytest

BUCKET = "mlp-dev-raw-123456789012"
PREFIX = "backfill/member_interactions/"
MARKER_KEY = f"{PREFIX}event_date=2026-11-28/_SUCCESS"
SEQUENCER = "0064D3901D00059242"
DEFINITION = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}


@pytest.fixture
def state_machine_arn(aws_client) -> str:
    return aws_client("stepfunctions").create_state_machine(
        name="mlp-dev-backfill",
        definition=json.dumps(DEFINITION),
        roleArn="arn:aws:iam::123456789012:role/mlp-dev-backfill",
    )["stateMachineArn"]


@pytest.fixture
def trigger_env(monkeypatch, state_machine_arn) -> None:
    monkeypatch.setenv("STATE_MACHINE_ARN", state_machine_arn)
    monkeypatch.setenv("PREFIX", PREFIX)
    monkeypatch.delenv("MARKER_FILE", raising=False)
    monkeypatch.delenv("RUN_DATE_PATTERN", raising=False)


@pytest.fixture
def trigger(trigger_env, load_handler) -> ModuleType:
    return load_handler("data_availability")


def object_created(key: str = MARKER_KEY, sequencer: str = SEQUENCER, bucket: str = BUCKET):
    """An S3 "Object Created" event as EventBridge delivers it."""
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-29T01:12:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {
                "key": key,
                "size": 0,
                "etag": "d41d8cd98f00b204e9800998ecf8427e",
                "sequencer": sequencer,
            },
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }


def expected_name(run_date: str, key: str = MARKER_KEY, sequencer: str = SEQUENCER) -> str:
    digest = hashlib.sha256(f"{BUCKET}\n{key}\n{sequencer}".encode()).hexdigest()
    return f"data-{run_date}-{digest[:40]}"


@pytest.fixture
def executions(aws_client, state_machine_arn) -> Callable[[], list[dict]]:
    """Lists the state machine's executions."""
    return lambda: aws_client("stepfunctions").list_executions(stateMachineArn=state_machine_arn)[
        "executions"
    ]


def test_a_marker_starts_a_run_for_its_partition(trigger, executions, aws_client, lambda_context):
    result = trigger.handler(object_created(), lambda_context)

    name = expected_name("2026-11-28")
    [execution] = executions()
    assert result == {
        "started": True,
        "execution_name": name,
        "execution_arn": execution["executionArn"],
        "run_date": "2026-11-28",
    }
    assert execution["name"] == name
    assert len(name) <= 80
    assert re.fullmatch(r"data-2026-11-28-[0-9a-f]{40}", name)
    described = aws_client("stepfunctions").describe_execution(
        executionArn=execution["executionArn"]
    )
    assert json.loads(described["input"]) == {
        "run_date": "2026-11-28",
        "trigger": {"type": "data", "bucket": BUCKET, "key": MARKER_KEY},
    }


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (
            f"{PREFIX}event_date=2026-11-28/part-00000.json",
            f"{PREFIX}event_date=2026-11-28/part-00000.json is not a _SUCCESS marker",
        ),
        (
            f"{PREFIX}event_date=2026-11-28/_SUCCESS.tmp",
            f"{PREFIX}event_date=2026-11-28/_SUCCESS.tmp is not a _SUCCESS marker",
        ),
        (
            f"{PREFIX}event_date=2026-11-28/_SUCCESS/",
            f"{PREFIX}event_date=2026-11-28/_SUCCESS/ is not a _SUCCESS marker",
        ),
        (
            "streaming/member_interactions/event_date=2026-11-28/_SUCCESS",
            f"streaming/member_interactions/event_date=2026-11-28/_SUCCESS is outside {PREFIX}",
        ),
        (
            "backfill/member_interactions_v2/event_date=2026-11-28/_SUCCESS",
            f"backfill/member_interactions_v2/event_date=2026-11-28/_SUCCESS is outside {PREFIX}",
        ),
    ],
)
def test_other_objects_start_nothing(trigger, executions, lambda_context, key, reason):
    result = trigger.handler(object_created(key), lambda_context)

    assert result == {"started": False, "reason": reason}
    assert executions() == []


@pytest.mark.parametrize(
    "key",
    [
        f"{PREFIX}_SUCCESS",
        f"{PREFIX}event_date=2026-13-01/_SUCCESS",
        f"{PREFIX}dt=2026-11-28/_SUCCESS",
    ],
)
def test_a_marker_without_a_run_date_warns_and_starts_nothing(
    trigger, executions, lambda_context, caplog, key
):
    result = trigger.handler(object_created(key), lambda_context)

    reason = f"no YYYY-MM-DD run date matching event_date=(\\d{{4}}-\\d{{2}}-\\d{{2}}) in {key}"
    assert result == {"started": False, "reason": reason}
    assert executions() == []
    [warning] = [record for record in caplog.records if record.levelname == "WARNING"]
    assert warning.getMessage() == "Marker without a run date"
    assert warning.reason == reason


def test_a_redelivered_event_during_the_run_starts_nothing_new(trigger, executions, lambda_context):
    first = trigger.handler(object_created(), lambda_context)
    again = trigger.handler(object_created(), lambda_context)

    # Step Functions answers a repeated start of a running execution with that execution.
    assert again == first
    assert len(executions()) == 1


def test_a_redelivered_event_after_the_run_is_a_duplicate(
    trigger, executions, aws_client, lambda_context
):
    first = trigger.handler(object_created(), lambda_context)
    aws_client("stepfunctions").stop_execution(executionArn=first["execution_arn"])

    again = trigger.handler(object_created(), lambda_context)

    assert again == {
        "started": False,
        "duplicate": True,
        "execution_name": expected_name("2026-11-28"),
        "run_date": "2026-11-28",
    }
    assert len(executions()) == 1


def test_a_rewritten_marker_starts_a_new_run(trigger, executions, aws_client, lambda_context):
    first = trigger.handler(object_created(), lambda_context)
    aws_client("stepfunctions").stop_execution(executionArn=first["execution_arn"])

    second = trigger.handler(object_created(sequencer="0064D3901D00059299"), lambda_context)

    assert second["started"] is True
    assert second["execution_name"] == expected_name("2026-11-28", sequencer="0064D3901D00059299")
    assert len(executions()) == 2


def test_names_are_valid_for_long_keys_and_distinct_per_object(trigger):
    long_key = f"{PREFIX}{'x' * 900}/event_date=2026-11-28/_SUCCESS"
    names = {
        trigger.execution_name("2026-11-28", BUCKET, long_key, SEQUENCER),
        trigger.execution_name("2026-11-28", BUCKET, MARKER_KEY, SEQUENCER),
        trigger.execution_name("2026-11-28", "other-bucket", MARKER_KEY, SEQUENCER),
        trigger.execution_name("2026-11-28", BUCKET, MARKER_KEY, "0064D3901D00059243"),
    }

    assert len(names) == 4
    for name in names:
        assert len(name) == 56
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", name)


def test_marker_and_pattern_come_from_the_environment(
    trigger_env, load_handler, monkeypatch, lambda_context
):
    monkeypatch.setenv("MARKER_FILE", "_DONE")
    monkeypatch.setenv("RUN_DATE_PATTERN", r"/dt=(\d{4}-\d{2}-\d{2})/")
    trigger = load_handler("data_availability")
    key = f"{PREFIX}dt=2026-11-27/_DONE"

    assert trigger.handler(object_created(f"{PREFIX}dt=2026-11-27/_SUCCESS"), lambda_context) == {
        "started": False,
        "reason": f"{PREFIX}dt=2026-11-27/_SUCCESS is not a _DONE marker",
    }
    result = trigger.handler(object_created(key), lambda_context)

    assert result["started"] is True
    assert result["execution_name"] == expected_name("2026-11-27", key=key)


def _without(path: tuple[str, ...]) -> dict:
    event = copy.deepcopy(object_created())
    parent = event
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    return event


def _with(path: tuple[str, ...], value) -> dict:
    event = copy.deepcopy(object_created())
    parent = event
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return event


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            _with(("source",), "aws.s3.custom"),
            "expected an aws.s3 'Object Created' event, got source='aws.s3.custom' "
            "detail-type='Object Created'",
        ),
        (
            _with(("detail-type",), "Object Deleted"),
            "expected an aws.s3 'Object Created' event, got source='aws.s3' "
            "detail-type='Object Deleted'",
        ),
        (
            {"Records": [{"eventSource": "aws:s3"}]},
            "expected an aws.s3 'Object Created' event, got source=None detail-type=None",
        ),
        (_without(("detail",)), "detail.bucket.name must be a non-empty string, got None"),
        (
            _without(("detail", "bucket")),
            "detail.bucket.name must be a non-empty string, got None",
        ),
        (
            _with(("detail", "bucket", "name"), ""),
            "detail.bucket.name must be a non-empty string, got ''",
        ),
        (
            _without(("detail", "object", "key")),
            "detail.object.key must be a non-empty string, got None",
        ),
        (
            _with(("detail", "object"), "backfill/_SUCCESS"),
            "detail.object.key must be a non-empty string, got None",
        ),
        (
            _without(("detail", "object", "sequencer")),
            "detail.object.sequencer must be a non-empty string, got None",
        ),
        ("not an event", "the event must be a JSON object, got str"),
    ],
)
def test_rejects_malformed_events(trigger, executions, lambda_context, event, message):
    with pytest.raises(trigger.InvalidEvent) as error:
        trigger.handler(event, lambda_context)

    assert type(error.value).__name__ == "InvalidEvent"
    assert str(error.value) == message
    assert executions() == []


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (
            r"event_date=\d{4}-\d{2}-\d{2}",
            r"RUN_DATE_PATTERN must have exactly one group, 'event_date=\\d{4}-\\d{2}-\\d{2}' "
            "has 0",
        ),
        (
            r"(\w+)=(\d{4}-\d{2}-\d{2})",
            r"RUN_DATE_PATTERN must have exactly one group, "
            r"'(\\w+)=(\\d{4}-\\d{2}-\\d{2})' has 2",
        ),
        (
            "event_date=(",
            "RUN_DATE_PATTERN is not a valid regex: missing ), unterminated "
            "subpattern at position 11",
        ),
    ],
)
def test_refuses_to_start_with_a_bad_pattern(
    trigger_env, load_handler, monkeypatch, pattern, message
):
    monkeypatch.setenv("RUN_DATE_PATTERN", pattern)

    with pytest.raises(ValueError, match=r"^RUN_DATE_PATTERN") as error:
        load_handler("data_availability")

    assert type(error.value).__name__ == "ConfigurationError"
    assert str(error.value) == message
