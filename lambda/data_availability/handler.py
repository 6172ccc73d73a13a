"""Starts a workflow run when a partition's completion marker lands in S3.

Triggered by an EventBridge rule on S3 "Object Created" events (the bucket has EventBridge
notifications on). That format carries the object key as stored, not URL-encoded as in the
older S3-to-Lambda/SQS/SNS notification format, so the key is used as it is.

Environment:

- ``STATE_MACHINE_ARN``: the Standard workflow to start.
- ``PREFIX``: only keys under it count, e.g. ``backfill/member_interactions/``.
- ``MARKER_FILE``: the last path segment that marks a partition complete (default ``_SUCCESS``).
- ``RUN_DATE_PATTERN``: regex with one group taking the run date from the key
  (default ``event_date=(\\d{4}-\\d{2}-\\d{2})``).

Output:

- ``{"started": true, "execution_name", "execution_arn", "run_date"}`` when a run started;
- ``{"started": false, "reason"}`` for a key outside PREFIX, a part file, or a marker whose key
  has no valid run date (the last also logs a warning);
- ``{"started": false, "duplicate": true, "execution_name", "run_date"}`` for a redelivered
  event whose run already finished (Step Functions answers ``ExecutionAlreadyExists``). While
  that run is still going, Step Functions answers a repeated start of the same name and input
  with the running execution, so the result is ``started: true`` with the same
  ``execution_arn``: either way one event starts at most one run.

The execution name is ``data-<run date>-<40 hex digits of SHA-256(bucket, key, sequencer)>``:
the same event always maps to the same name, and an overwritten marker (a new sequencer)
starts a new run. The execution input is ``{"run_date", "trigger": {"type": "data", "bucket",
"key"}}``; it holds nothing that changes between deliveries, which the idempotent start needs.

Errors: ``InvalidEvent`` for an event that is not an S3 Object Created event with a bucket
name, key and sequencer (nothing is started); ``ConfigurationError`` at start-up.

IAM: ``states:StartExecution`` on the state machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from typing import Any

import boto3
from aws_lambda_powertools import Logger

DEFAULT_MARKER_FILE = "_SUCCESS"
DEFAULT_RUN_DATE_PATTERN = r"event_date=(\d{4}-\d{2}-\d{2})"
RUN_DATE_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
EXECUTION_NAME_HASH_LENGTH = 40


class ConfigurationError(ValueError):
    """An environment variable of the function is malformed."""


class InvalidEvent(ValueError):  # noqa: N818 - the error name callers match on
    """The event is not an S3 Object Created event this function can act on."""


def _load_pattern(raw: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(raw)
    except re.error as error:
        raise ConfigurationError(f"RUN_DATE_PATTERN is not a valid regex: {error}") from None
    if pattern.groups != 1:
        raise ConfigurationError(
            f"RUN_DATE_PATTERN must have exactly one group, {raw!r} has {pattern.groups}"
        )
    return pattern


logger = Logger(service="data-availability")
STATE_MACHINE_ARN = os.environ["STATE_MACHINE_ARN"]
PREFIX = os.environ["PREFIX"]
MARKER_FILE = os.environ.get("MARKER_FILE") or DEFAULT_MARKER_FILE
RUN_DATE_PATTERN = _load_pattern(os.environ.get("RUN_DATE_PATTERN") or DEFAULT_RUN_DATE_PATTERN)
stepfunctions = boto3.client("stepfunctions")


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{path} must be a non-empty string, got {value!r}")
    return value


def _parse(event: Any) -> tuple[str, str, str]:
    if not isinstance(event, dict):
        raise InvalidEvent(f"the event must be a JSON object, got {type(event).__name__}")
    source, detail_type = event.get("source"), event.get("detail-type")
    if source != "aws.s3" or detail_type != "Object Created":
        raise InvalidEvent(
            f"expected an aws.s3 'Object Created' event, got source={source!r} "
            f"detail-type={detail_type!r}"
        )
    detail = event.get("detail")
    bucket = detail.get("bucket") if isinstance(detail, dict) else None
    s3_object = detail.get("object") if isinstance(detail, dict) else None
    return (
        _text(bucket.get("name") if isinstance(bucket, dict) else None, "detail.bucket.name"),
        _text(s3_object.get("key") if isinstance(s3_object, dict) else None, "detail.object.key"),
        _text(
            s3_object.get("sequencer") if isinstance(s3_object, dict) else None,
            "detail.object.sequencer",
        ),
    )


def _run_date(key: str) -> str | None:
    match = RUN_DATE_PATTERN.search(key)
    if match is None or match.group(1) is None:
        return None
    run_date = match.group(1)
    if not RUN_DATE_FORMAT.fullmatch(run_date):
        return None
    try:
        dt.date.fromisoformat(run_date)
    except ValueError:
        return None
    return run_date


def execution_name(run_date: str, bucket: str, key: str, sequencer: str) -> str:
    """The Step Functions execution name for one object-created event: at most 80 characters
    of [A-Za-z0-9-_], readable, and the same for every delivery of the event."""
    digest = hashlib.sha256("\n".join((bucket, key, sequencer)).encode()).hexdigest()
    return f"data-{run_date}-{digest[:EXECUTION_NAME_HASH_LENGTH]}"


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    bucket, key, sequencer = _parse(event)
    logger.append_keys(bucket=bucket, key=key)
    if not key.startswith(PREFIX):
        reason = f"{key} is outside {PREFIX}"
        logger.info("Ignored", extra={"reason": reason})
        return {"started": False, "reason": reason}
    if key.rsplit("/", 1)[-1] != MARKER_FILE:
        reason = f"{key} is not a {MARKER_FILE} marker"
        logger.info("Ignored", extra={"reason": reason})
        return {"started": False, "reason": reason}
    run_date = _run_date(key)
    if run_date is None:
        reason = f"no YYYY-MM-DD run date matching {RUN_DATE_PATTERN.pattern} in {key}"
        logger.warning("Marker without a run date", extra={"reason": reason})
        return {"started": False, "reason": reason}

    name = execution_name(run_date, bucket, key, sequencer)
    run_input = {"run_date": run_date, "trigger": {"type": "data", "bucket": bucket, "key": key}}
    try:
        response = stepfunctions.start_execution(
            stateMachineArn=STATE_MACHINE_ARN, name=name, input=json.dumps(run_input)
        )
    except stepfunctions.exceptions.ExecutionAlreadyExists:
        logger.info("Run already started for this event", extra={"execution_name": name})
        return {"started": False, "duplicate": True, "execution_name": name, "run_date": run_date}
    logger.info(
        "Run started",
        extra={"execution_name": name, "execution_arn": response["executionArn"]},
    )
    return {
        "started": True,
        "execution_name": name,
        "execution_arn": response["executionArn"],
        "run_date": run_date,
    }
