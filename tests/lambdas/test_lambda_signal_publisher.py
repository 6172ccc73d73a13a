"""The signal publisher against a moto event bus and idempotency table."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import ModuleType

import moto.events.models
import pytest
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyValidationError
from botocore.stub import Stubber

BUS = "mlp-dev-signals"
TABLE = "mlp-dev-signal-idempotency"
SIGNALS = {"retrain-requested": ["model"], "features-ready": ["table", "run_date"], "ping": []}


@pytest.fixture
def bus_events(aws_client, monkeypatch) -> list[dict]:
    """Every event that reached the signal bus and matched a rule on it for the publisher's
    source, as moto built it.

    moto hands events to rule targets through jsonpath-ng, which only its `events` extra
    installs, so the rule's delivery is recorded here instead of sent on to a target; the bus
    lookup and the rule's pattern matching are still moto's.
    """
    delivered: list[dict] = []

    def record(rule, event, transform_input=True):
        if rule.event_pattern.matches_event(event):
            delivered.append(copy.deepcopy(event))

    monkeypatch.setattr(moto.events.models.Rule, "send_to_targets", record)
    events = aws_client("events")
    events.create_event_bus(Name=BUS)
    events.put_rule(
        Name="all-signals",
        EventBusName=BUS,
        EventPattern=json.dumps({"source": ["ml-platform.signals"]}),
    )
    return delivered


@pytest.fixture
def idempotency_table(aws_client) -> str:
    """The table as the CDK side creates it: Powertools' default key and TTL attribute."""
    dynamodb = aws_client("dynamodb")
    dynamodb.create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=TABLE,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"},
    )
    return TABLE


@pytest.fixture
def signal_env(monkeypatch) -> None:
    monkeypatch.setenv("EVENT_BUS_NAME", BUS)
    monkeypatch.setenv("SIGNALS", json.dumps(SIGNALS))
    monkeypatch.setenv("IDEMPOTENCY_TABLE", TABLE)


@pytest.fixture
def publisher(signal_env, bus_events, idempotency_table, load_handler) -> ModuleType:
    return load_handler("signal_publisher")


@pytest.fixture
def idempotency_records(aws_client, idempotency_table) -> Callable[[], list[dict]]:
    """Scans the idempotency table."""
    return lambda: aws_client("dynamodb").scan(TableName=idempotency_table)["Items"]


def test_publishes_the_signal_on_the_bus(
    publisher, idempotency_records, bus_events, lambda_context
):
    request = {
        "signal": "retrain-requested",
        "params": {"model": "recommender", "reason": "drift"},
        "idempotency_key": "retrain-recommender-2026-11-28",
    }

    result = publisher.handler(request, lambda_context)

    [event] = bus_events
    assert result == {"signal": "retrain-requested", "event_id": event["id"]}
    assert event["source"] == "ml-platform.signals"
    assert event["detail-type"] == "retrain-requested"
    assert event["detail"] == request
    [record] = idempotency_records()
    assert record["status"] == {"S": "COMPLETED"}
    assert json.loads(record["data"]["S"]) == result
    assert "expiration" in record


def test_a_retry_with_the_same_key_publishes_nothing_more(
    publisher, idempotency_records, bus_events, lambda_context
):
    request = {
        "signal": "features-ready",
        "params": {"table": "member_features", "run_date": "2026-11-28"},
        "idempotency_key": "features-2026-11-28",
    }

    first = publisher.handler(request, lambda_context)
    second = publisher.handler(dict(request), lambda_context)

    assert second == first
    assert len(bus_events) == 1
    assert len(idempotency_records()) == 1


def test_a_new_key_publishes_again(publisher, bus_events, lambda_context):
    request = {"signal": "ping", "params": {}, "idempotency_key": "ping-1"}

    first = publisher.handler(request, lambda_context)
    second = publisher.handler({**request, "idempotency_key": "ping-2"}, lambda_context)

    assert first["event_id"] != second["event_id"]
    assert sorted(event["id"] for event in bus_events) == sorted(
        [first["event_id"], second["event_id"]]
    )


def test_params_may_be_omitted_when_none_are_required(publisher, bus_events, lambda_context):
    publisher.handler({"signal": "ping", "idempotency_key": "ping-1"}, lambda_context)

    [event] = bus_events
    assert event["detail"] == {"signal": "ping", "params": {}, "idempotency_key": "ping-1"}


def test_reusing_a_key_for_another_request_is_refused(publisher, bus_events, lambda_context):
    request = {
        "signal": "retrain-requested",
        "params": {"model": "recommender"},
        "idempotency_key": "retrain-1",
    }
    publisher.handler(request, lambda_context)

    with pytest.raises(IdempotencyValidationError):
        publisher.handler({**request, "params": {"model": "ranker"}}, lambda_context)

    assert len(bus_events) == 1


def test_a_rejected_entry_fails_and_leaves_the_key_free(
    publisher, idempotency_records, bus_events, lambda_context
):
    request = {
        "signal": "retrain-requested",
        "params": {"model": "recommender"},
        "idempotency_key": "retrain-1",
    }
    with Stubber(publisher.events) as stubber:
        stubber.add_response(
            "put_events",
            {
                "FailedEntryCount": 1,
                "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}],
            },
        )
        with pytest.raises(publisher.PublishError) as error:
            publisher.handler(request, lambda_context)

    assert str(error.value) == (
        f"EventBridge rejected signal 'retrain-requested' on bus {BUS}: InternalFailure: try again"
    )
    assert idempotency_records() == []
    # The failure left no record behind, so the caller's retry publishes.
    publisher.handler(request, lambda_context)
    assert len(bus_events) == 1


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"signal": "deploy", "params": {}, "idempotency_key": "k"},
            "unknown signal 'deploy'; known signals: features-ready, ping, retrain-requested",
        ),
        (
            {"params": {}, "idempotency_key": "k"},
            "unknown signal None; known signals: features-ready, ping, retrain-requested",
        ),
        (
            {"signal": ["ping"], "idempotency_key": "k"},
            "unknown signal ['ping']; known signals: features-ready, ping, retrain-requested",
        ),
        (
            {"signal": "ping", "params": ["a"], "idempotency_key": "k"},
            "params of 'ping' must be an object, got list",
        ),
        (
            {"signal": "retrain-requested", "params": None, "idempotency_key": "k"},
            "params of 'retrain-requested' must be an object, got NoneType",
        ),
        (
            {
                "signal": "retrain-requested",
                "params": {"model": {"name": "recommender"}, "version": 3},
                "idempotency_key": "k",
            },
            "params of 'retrain-requested' must be strings: model, version",
        ),
        (
            {"signal": "features-ready", "params": {"table": "t"}, "idempotency_key": "k"},
            "signal 'features-ready' requires params: run_date",
        ),
        (
            {"signal": "features-ready", "params": {"model": "m"}, "idempotency_key": "k"},
            "signal 'features-ready' requires params: run_date, table",
        ),
        (
            {"signal": "retrain-requested", "params": {"model": ""}, "idempotency_key": "k"},
            "signal 'retrain-requested' requires params: model",
        ),
        (
            {"signal": "ping", "params": {}},
            "idempotency_key must be a non-empty string, got None",
        ),
        (
            {"signal": "ping", "params": {}, "idempotency_key": "  "},
            "idempotency_key must be a non-empty string, got '  '",
        ),
        (
            {"signal": "ping", "params": {}, "idempotency_key": 42},
            "idempotency_key must be a non-empty string, got 42",
        ),
        (
            {"signal": "ping", "params": {}, "idempotency_key": "k" * 129},
            "idempotency_key is 129 characters, at most 128 are allowed",
        ),
    ],
)
def test_rejects_invalid_requests(
    publisher, idempotency_records, bus_events, lambda_context, request_, message
):
    with pytest.raises(publisher.InvalidSignal) as error:
        publisher.handler(request_, lambda_context)

    assert type(error.value).__name__ == "InvalidSignal"
    assert str(error.value) == message
    assert bus_events == []
    assert idempotency_records() == []


def test_a_key_of_128_characters_is_accepted(publisher, bus_events, lambda_context):
    publisher.handler({"signal": "ping", "idempotency_key": "k" * 128}, lambda_context)

    assert len(bus_events) == 1


def test_rejects_a_request_that_is_not_an_object(publisher, lambda_context):
    with pytest.raises(publisher.InvalidSignal) as error:
        publisher.handler("retrain-requested", lambda_context)

    assert str(error.value) == "the request must be a JSON object, got str"


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        ("retrain-requested", "SIGNALS is not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("[]", "SIGNALS must be a non-empty JSON object"),
        ("{}", "SIGNALS must be a non-empty JSON object"),
        (
            '{"retrain-requested": "model"}',
            "SIGNALS['retrain-requested'] must be a list of parameter names, got 'model'",
        ),
        (
            '{"retrain-requested": ["model", 1]}',
            "SIGNALS['retrain-requested'] has a parameter name that is not text",
        ),
    ],
)
def test_refuses_to_start_with_malformed_signals(
    signal_env, mocked_aws, load_handler, monkeypatch, signals, message
):
    monkeypatch.setenv("SIGNALS", signals)

    with pytest.raises(ValueError, match=r"^SIGNALS") as error:
        load_handler("signal_publisher")

    assert type(error.value).__name__ == "ConfigurationError"
    assert str(error.value) == message
