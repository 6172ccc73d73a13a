"""Data-quality gate: the first state of the daily Step Functions workflows.

Input (the state's payload)::

    {"run_date": "YYYY-MM-DD" | null,          # optional; default: the UTC day before
     "execution_start_time": "<ISO 8601>",      #   this ($$.Execution.StartTime)
     "bucket": "<bucket name>",
     "prefix_template": "...{run_date}...",
     "min_objects": 1, "min_bytes": 1,          # optional, both default to 1
     "dead_letter_prefix_template": "...{run_date}...",   # optional, together with
     "max_dead_letter_ratio": 0.05}                       # this one, in [0, 1]

It lists the objects under the formatted prefix and, when a dead-letter template is given,
under the formatted dead-letter prefix, and checks the counts against the thresholds.
Keys ending in "/" are zero-byte folder placeholders (the S3 console's "Create folder"), not
data, and are not counted.

Output when every check passes::

    {"run_date", "passed": true, "objects", "bytes",
     "dead_letter_objects", "dead_letter_ratio",    # null when no dead-letter check is asked
     "prefix"}

Errors (the Lambda error type is the class name, which Step Functions matches on):

- ``QualityGateFailed``: a threshold is not met; the message names each failed check,
  e.g. "s3://bucket/prefix/: 0 objects, need at least 1".
- ``InvalidInput``: the input is malformed; the message names the field.

IAM: ``s3:ListBucket`` on the bucket. Nothing else is called.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from typing import Any

import boto3
from aws_lambda_powertools import Logger

logger = Logger(service="quality-gate")
s3 = boto3.client("s3")

RUN_DATE_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")


class InvalidInput(ValueError):  # noqa: N818 - the error name callers match on
    """The gate's input is malformed; the message names the field."""


class QualityGateFailed(Exception):  # noqa: N818 - the error name callers match on
    """The data does not meet a threshold; the message says which and by how much."""


def _required_string(event: dict[str, Any], field: str) -> str:
    value = event.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string, got {value!r}")
    return value


def _threshold(event: dict[str, Any], field: str, default: int) -> int:
    value = event.get(field, default)
    # bool is an int subclass, and `true` as a threshold is a mistake rather than 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{field} must be a non-negative integer, got {value!r}")
    return value


def _ratio(event: dict[str, Any], field: str) -> float:
    value = event.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidInput(f"{field} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _run_date(event: dict[str, Any]) -> str:
    run_date = event.get("run_date")
    if run_date is not None:
        if not isinstance(run_date, str) or not RUN_DATE_FORMAT.fullmatch(run_date):
            raise InvalidInput(f"run_date must be a YYYY-MM-DD string, got {run_date!r}")
        try:
            dt.date.fromisoformat(run_date)
        except ValueError:
            raise InvalidInput(f"run_date is not a calendar date: {run_date!r}") from None
        return run_date
    start = _required_string(event, "execution_start_time")
    try:
        started_at = dt.datetime.fromisoformat(start)
    except ValueError:
        raise InvalidInput(
            f"execution_start_time must be an ISO 8601 timestamp, got {start!r}"
        ) from None
    if started_at.tzinfo is None:
        # Without an offset the "day before" would depend on the function's clock zone.
        raise InvalidInput(f"execution_start_time must carry a UTC offset, got {start!r}")
    return (started_at.astimezone(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


def _format_prefix(event: dict[str, Any], field: str, run_date: str) -> str:
    template = _required_string(event, field)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise InvalidInput(f"{field} is not a valid template: {error}") from None
    if fields != {"run_date"}:
        raise InvalidInput(
            f"{field} must contain {{run_date}} and no other placeholder, got {template!r}"
        )
    return template.format(run_date=run_date)


def _count(bucket: str, prefix: str) -> tuple[int, int]:
    objects = total_bytes = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/"):
                continue
            objects += 1
            total_bytes += item["Size"]
    return objects, total_bytes


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise InvalidInput(f"the input must be a JSON object, got {type(event).__name__}")
    bucket = _required_string(event, "bucket")
    run_date = _run_date(event)
    prefix = _format_prefix(event, "prefix_template", run_date)
    min_objects = _threshold(event, "min_objects", 1)
    min_bytes = _threshold(event, "min_bytes", 1)
    has_template = event.get("dead_letter_prefix_template") is not None
    has_ratio = event.get("max_dead_letter_ratio") is not None
    if has_template != has_ratio:
        raise InvalidInput(
            "dead_letter_prefix_template and max_dead_letter_ratio must be given together"
        )
    dead_letter_prefix = (
        _format_prefix(event, "dead_letter_prefix_template", run_date) if has_template else None
    )
    max_ratio = _ratio(event, "max_dead_letter_ratio") if has_ratio else None

    objects, total_bytes = _count(bucket, prefix)
    failures = []
    location = f"s3://{bucket}/{prefix}"
    if objects < min_objects:
        failures.append(f"{location}: {objects} objects, need at least {min_objects}")
    if total_bytes < min_bytes:
        failures.append(f"{location}: {total_bytes} bytes, need at least {min_bytes}")

    dead_letter_objects: int | None = None
    ratio: float | None = None
    if dead_letter_prefix is not None and max_ratio is not None:
        dead_letter_objects, _ = _count(bucket, dead_letter_prefix)
        seen = dead_letter_objects + objects
        ratio = dead_letter_objects / seen if seen else 0.0
        if ratio > max_ratio:
            failures.append(
                f"s3://{bucket}/{dead_letter_prefix}: dead-letter ratio {ratio:.4f} "
                f"({dead_letter_objects} dead-letter of {seen} objects) exceeds {max_ratio}"
            )

    result = {
        "run_date": run_date,
        "passed": not failures,
        "objects": objects,
        "bytes": total_bytes,
        "dead_letter_objects": dead_letter_objects,
        "dead_letter_ratio": ratio,
        "prefix": prefix,
    }
    if failures:
        logger.warning("Quality gate failed", extra={**result, "failures": failures})
        raise QualityGateFailed("; ".join(failures))
    logger.info("Quality gate passed", extra=result)
    return result
