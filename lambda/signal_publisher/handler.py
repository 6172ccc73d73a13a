"""Publishes a named signal (as in Maestro's signal triggers) on the platform's event bus.

Environment:

- ``EVENT_BUS_NAME``: the bus to publish on.
- ``SIGNALS``: JSON object of signal name -> list of required parameter names,
  e.g. ``{"retrain-requested": ["model"]}``.
- ``IDEMPOTENCY_TABLE``: DynamoDB table for the idempotency records (partition key ``id``,
  string; TTL attribute ``expiration``).

Input::

    {"signal": "retrain-requested", "params": {"model": "recommender"},
     "idempotency_key": "any string the caller picks"}

``params`` maps strings to strings and may be omitted when the signal requires none; every
required parameter must be present and non-empty, and extra parameters are passed along.
``idempotency_key`` is a non-empty string of at most 128 characters.

It puts one event: Source ``ml-platform.signals``, DetailType the signal name, Detail
``{"signal", "params", "idempotency_key"}``, and returns ``{"signal", "event_id"}``.
A call repeating an idempotency key seen in the last 24 hours returns the first call's result
and publishes nothing; repeating a key with a different signal or params raises Powertools'
``IdempotencyValidationError`` instead of silently answering for another request.

Errors: ``InvalidSignal`` for a malformed request (nothing is published), ``PublishError``
when EventBridge rejects the entry, ``ConfigurationError`` at start-up for a bad ``SIGNALS``.

IAM: ``events:PutEvents`` on the bus; ``dynamodb:GetItem``, ``dynamodb:PutItem``,
``dynamodb:UpdateItem`` and ``dynamodb:DeleteItem`` on the idempotency table.
"""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

SOURCE = "ml-platform.signals"
MAX_IDEMPOTENCY_KEY_LENGTH = 128
# Long enough to absorb Step Functions and EventBridge retries and a re-run of the same daily
# workflow, short enough that a key reused on a later day publishes again.
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60


class ConfigurationError(ValueError):
    """An environment variable of the function is malformed."""


class InvalidSignal(ValueError):  # noqa: N818 - the error name callers match on
    """The request is malformed; nothing was published."""


class PublishError(RuntimeError):
    """EventBridge did not accept the event."""


def _load_signals(raw: str) -> dict[str, frozenset[str]]:
    try:
        signals = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"SIGNALS is not JSON: {error}") from None
    if not isinstance(signals, dict) or not signals:
        raise ConfigurationError("SIGNALS must be a non-empty JSON object")
    for name, required in signals.items():
        if not name or not isinstance(required, list):
            raise ConfigurationError(
                f"SIGNALS[{name!r}] must be a list of parameter names, got {required!r}"
            )
        if not all(isinstance(param, str) and param for param in required):
            raise ConfigurationError(f"SIGNALS[{name!r}] has a parameter name that is not text")
    return {name: frozenset(required) for name, required in signals.items()}


logger = Logger(service="signal-publisher")
EVENT_BUS_NAME = os.environ["EVENT_BUS_NAME"]
SIGNALS = _load_signals(os.environ["SIGNALS"])
events = boto3.client("events")
# Handing Powertools a client of the default session spares a second session on a cold start.
persistence_layer = DynamoDBPersistenceLayer(
    table_name=os.environ["IDEMPOTENCY_TABLE"], boto3_client=boto3.client("dynamodb")
)
idempotency_config = IdempotencyConfig(
    event_key_jmespath="idempotency_key",
    payload_validation_jmespath="[signal, params]",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
)


def _validate(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidSignal(f"the request must be a JSON object, got {type(event).__name__}")
    signal = event.get("signal")
    if not isinstance(signal, str) or signal not in SIGNALS:
        raise InvalidSignal(
            f"unknown signal {signal!r}; known signals: {', '.join(sorted(SIGNALS))}"
        )
    params = event.get("params", {})
    if not isinstance(params, dict):
        raise InvalidSignal(f"params of {signal!r} must be an object, got {type(params).__name__}")
    not_text = sorted(name for name, value in params.items() if not isinstance(value, str))
    if not_text:
        raise InvalidSignal(f"params of {signal!r} must be strings: {', '.join(not_text)}")
    missing = sorted(name for name in SIGNALS[signal] if not params.get(name))
    if missing:
        raise InvalidSignal(f"signal {signal!r} requires params: {', '.join(missing)}")
    key = event.get("idempotency_key")
    if not isinstance(key, str) or not key.strip():
        raise InvalidSignal(f"idempotency_key must be a non-empty string, got {key!r}")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidSignal(
            f"idempotency_key is {len(key)} characters, at most "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} are allowed"
        )
    return {"signal": signal, "params": params, "idempotency_key": key}


@idempotent_function(
    data_keyword_argument="request",
    config=idempotency_config,
    persistence_store=persistence_layer,
)
def _publish(request: dict[str, Any]) -> dict[str, str]:
    response = events.put_events(
        Entries=[
            {
                "Source": SOURCE,
                "DetailType": request["signal"],
                "Detail": json.dumps(request),
                "EventBusName": EVENT_BUS_NAME,
            }
        ]
    )
    entry = response["Entries"][0]
    if response.get("FailedEntryCount", 0) > 0:
        raise PublishError(
            f"EventBridge rejected signal {request['signal']!r} on bus {EVENT_BUS_NAME}: "
            f"{entry.get('ErrorCode')}: {entry.get('ErrorMessage')}"
        )
    logger.info(
        "Signal published",
        extra={
            "signal": request["signal"],
            "event_id": entry["EventId"],
            "params": request["params"],
        },
    )
    return {"signal": request["signal"], "event_id": entry["EventId"]}


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, str]:
    # Validation comes before the idempotency layer so a bad request fails with its own
    # message and leaves no record behind.
    request = _validate(event)
    # Lets an in-progress record expire with this invocation if it times out mid-publish.
    idempotency_config.register_lambda_context(context)
    return _publish(request=request)
