"""Publishes how old each feature group's newest ingested features are.

Invoked every 15 minutes by EventBridge Scheduler; the event's content is not read.

Environment (read at cold start):

- ``FEATURE_GROUPS``: a non-empty JSON list of
  ``{"name": <feature group>, "marker_bucket": <bucket>, "marker_key": <key>}``, names unique;
  each marker is the JSON document the batch ingestion job writes after a complete run,
  ``{"feature_group", "run_date", "records", "newest_event_time", "ingested_at"}``.
- ``METRIC_NAMESPACE``: the CloudWatch namespace, e.g. ``MLPlatform/FeatureStore``.

For each group it reads the marker and puts, with dimension ``FeatureGroup=<name>`` and the
invocation time as timestamp:

- ``FeatureAgeSeconds`` (Seconds): now minus the marker's ``newest_event_time``;
- ``RecordsIngested`` (Count): the marker's ``records``.

A group without a marker gets a warning in the log and no metric, which the freshness alarm
treats as breaching.

Output: ``{"groups": {<name>: <age in seconds> | null}}``, null for a group without a marker.

Errors (the Lambda error type is the class name):

- ``InvalidMarker``: a marker is not JSON, lacks ``records`` or ``newest_event_time``, has them
  of the wrong type, or names another feature group; the message names each such marker. It
  is raised after the other groups' metrics were published. An S3 error other than a missing
  key is likewise raised after the other groups were handled.
- ``ConfigurationError``: an environment variable is missing or malformed (at cold start).

IAM: ``s3:GetObject`` on each marker key; ``s3:ListBucket`` on each marker bucket, which
may be limited to the marker keys with an ``s3:prefix`` condition, so that a missing marker
reads as 404 rather than 403; ``cloudwatch:PutMetricData`` with the condition
``cloudwatch:namespace`` equal to ``METRIC_NAMESPACE``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

AGE_METRIC = "FeatureAgeSeconds"
RECORDS_METRIC = "RecordsIngested"
DIMENSION = "FeatureGroup"


class ConfigurationError(ValueError):
    """An environment variable of the function is missing or malformed."""


class InvalidMarker(ValueError):  # noqa: N818 - the error name callers match on
    """A marker exists but cannot be used; the message names the marker and the problem."""


@dataclass(frozen=True)
class FeatureGroup:
    name: str
    marker_bucket: str
    marker_key: str

    @property
    def marker_url(self) -> str:
        return f"s3://{self.marker_bucket}/{self.marker_key}"


@dataclass(frozen=True)
class Marker:
    records: int
    newest_event_time: float


def _load_groups(raw: str | None) -> tuple[FeatureGroup, ...]:
    if raw is None:
        raise ConfigurationError("FEATURE_GROUPS is not set")
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"FEATURE_GROUPS is not valid JSON: {error}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError("FEATURE_GROUPS must be a non-empty JSON list")
    groups = []
    for index, entry in enumerate(entries):
        fields = ("name", "marker_bucket", "marker_key")
        if not isinstance(entry, dict) or set(entry) != set(fields):
            raise ConfigurationError(
                f"FEATURE_GROUPS[{index}] must be an object with exactly the keys "
                f"{', '.join(fields)}, got {entry!r}"
            )
        for name in fields:
            if not isinstance(entry[name], str) or not entry[name]:
                raise ConfigurationError(
                    f"FEATURE_GROUPS[{index}].{name} must be a non-empty string, "
                    f"got {entry[name]!r}"
                )
        groups.append(FeatureGroup(**entry))
    names = [group.name for group in groups]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"FEATURE_GROUPS names must be unique, repeated: {duplicates}")
    return tuple(groups)


def _load_namespace(raw: str | None) -> str:
    if not raw:
        raise ConfigurationError("METRIC_NAMESPACE is not set")
    # CloudWatch reserves the AWS/ prefix and caps namespaces at 255 characters.
    if raw.startswith("AWS/") or len(raw) > 255 or not raw.isascii() or not raw.isprintable():
        raise ConfigurationError(f"METRIC_NAMESPACE is not a custom CloudWatch namespace: {raw!r}")
    return raw


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


logger = Logger(service="feature-freshness")
FEATURE_GROUPS = _load_groups(os.environ.get("FEATURE_GROUPS"))
METRIC_NAMESPACE = _load_namespace(os.environ.get("METRIC_NAMESPACE"))
s3 = boto3.client("s3")
cloudwatch = boto3.client("cloudwatch")
# The time source of the handler; replaced in tests.
clock: Callable[[], dt.datetime] = utc_now


def _number(value: Any) -> bool:
    # bool is an int subclass, and `true` is no timestamp or count.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_marker(group: FeatureGroup) -> Marker | None:
    try:
        response = s3.get_object(Bucket=group.marker_bucket, Key=group.marker_key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchKey":
            return None
        raise
    body = response["Body"].read()
    try:
        marker = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidMarker(f"{group.marker_url}: not JSON: {error}") from None
    if not isinstance(marker, dict):
        raise InvalidMarker(f"{group.marker_url}: not a JSON object")
    records, newest = marker.get("records"), marker.get("newest_event_time")
    if not isinstance(records, int) or isinstance(records, bool) or records < 0:
        raise InvalidMarker(
            f"{group.marker_url}: records must be a non-negative integer, got {records!r}"
        )
    if not _number(newest) or not math.isfinite(newest):
        raise InvalidMarker(
            f"{group.marker_url}: newest_event_time must be epoch seconds, got {newest!r}"
        )
    if marker.get("feature_group") != group.name:
        raise InvalidMarker(
            f"{group.marker_url}: written for feature group {marker.get('feature_group')!r}, "
            f"not {group.name!r}"
        )
    return Marker(records=records, newest_event_time=float(newest))


def _publish(group: FeatureGroup, marker: Marker, now: dt.datetime, age: float) -> None:
    dimensions = [{"Name": DIMENSION, "Value": group.name}]
    cloudwatch.put_metric_data(
        Namespace=METRIC_NAMESPACE,
        MetricData=[
            {
                "MetricName": AGE_METRIC,
                "Dimensions": dimensions,
                "Timestamp": now,
                "Value": age,
                "Unit": "Seconds",
            },
            {
                "MetricName": RECORDS_METRIC,
                "Dimensions": dimensions,
                "Timestamp": now,
                "Value": float(marker.records),
                "Unit": "Count",
            },
        ],
    )


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    now = clock()
    ages: dict[str, float | None] = {}
    invalid: list[InvalidMarker] = []
    failed: list[Exception] = []
    for group in FEATURE_GROUPS:
        try:
            marker = _read_marker(group)
        except InvalidMarker as error:
            logger.error("Invalid marker", extra={"feature_group": group.name, "error": str(error)})
            invalid.append(error)
            continue
        except ClientError as error:
            logger.exception(
                "Marker unreadable",
                extra={"feature_group": group.name, "marker": group.marker_url},
            )
            failed.append(error)
            continue
        if marker is None:
            logger.warning(
                "No marker: nothing published",
                extra={"feature_group": group.name, "marker": group.marker_url},
            )
            ages[group.name] = None
            continue
        age = now.timestamp() - marker.newest_event_time
        _publish(group, marker, now, age)
        logger.info(
            "Freshness published",
            extra={"feature_group": group.name, "age_seconds": age, "records": marker.records},
        )
        ages[group.name] = age
    if failed:
        raise failed[0]
    if invalid:
        raise InvalidMarker("; ".join(str(error) for error in invalid))
    return {"groups": ages}
