"""The serving tasks' prediction log, as the model monitor reads it.

Serving appends every prediction record, served or shadow, under the log's root
(``jobs.layout.PREDICTIONS_PREFIX`` of the raw bucket)::

    model=<model_name>/date=<YYYY-MM-DD>/hour=<HH>/<name>.jsonl.gz

An object holds one batch of records and is filed under the UTC hour of its first record;
serving flushes a batch at least hourly, so a record sits in the folder of its own hour or of
the hour before. Each line is one JSON object::

    {"member_id": str, "model_name": str, "model_version": str, "model_artifact_uri": str,
     "generated_at": "2026-12-02T17:00:00.123Z", "title_ids": [str], "scores": [float],
     "fallback": null | "popularity" | "store_timeout" | "store_unavailable",
     "experiment": null | str, "cell": null | str,
     "inputs": null | {"<input>": float | null, ...}}

Shadow scoring of a candidate version is logged under the model name ``<model>-shadow``. A
record with a fallback is not a ranking of the model, but its inputs are still the member's.
``experiment`` and ``cell`` are not read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from jobs.monitoring.statistics import is_finite_number

MODEL_FOLDER_PREFIX = "model="
FALLBACKS = frozenset({"popularity", "store_timeout", "store_unavailable"})
# How long after its hour's start a folder may receive records: its own hour, plus the batch
# span of a batch begun in its last moments (serving flushes at least hourly).
FOLDER_REACH = timedelta(hours=2)
_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TEXT_FIELDS = ("member_id", "model_name", "model_version", "model_artifact_uri")


class MalformedRecordError(ValueError):
    """A line of the log that is not a valid prediction record; the message says why."""


class Prediction(TypedDict):
    """A valid record, as a plain dict so it crosses between Spark's processes as it is.

    ``generated_at_ms`` is ``generated_at`` in epoch milliseconds.
    """

    member_id: str
    model_name: str
    model_version: str
    model_artifact_uri: str
    generated_at_ms: int
    title_ids: list[str]
    scores: list[float]
    fallback: str | None
    inputs: dict[str, float | None] | None


def parse_prediction(line: str) -> Prediction:
    """Return the record on ``line``; raise :class:`MalformedRecordError` naming the first fault."""
    try:
        document = json.loads(line)
    except ValueError as exc:
        raise MalformedRecordError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedRecordError(f"not a JSON object but {type(document).__name__}")
    for field in _TEXT_FIELDS:
        if not _is_text(document.get(field)):
            raise MalformedRecordError(f"{field} is not a non-empty string")
    title_ids = document.get("title_ids")
    if not isinstance(title_ids, list) or not all(_is_text(title) for title in title_ids):
        raise MalformedRecordError("title_ids is not a list of non-empty strings")
    scores = document.get("scores")
    if not isinstance(scores, list) or not all(is_finite_number(score) for score in scores):
        raise MalformedRecordError("scores is not a list of finite numbers")
    if len(scores) != len(title_ids):
        raise MalformedRecordError(f"{len(scores)} scores for {len(title_ids)} title_ids")
    fallback = document.get("fallback")
    if fallback is not None and fallback not in FALLBACKS:
        raise MalformedRecordError(
            f"fallback {fallback!r} is not null or one of {sorted(FALLBACKS)}"
        )
    return Prediction(
        member_id=document["member_id"],
        model_name=document["model_name"],
        model_version=document["model_version"],
        model_artifact_uri=document["model_artifact_uri"],
        generated_at_ms=_generated_at_millis(document.get("generated_at")),
        title_ids=title_ids,
        scores=[float(score) for score in scores],
        fallback=fallback,
        inputs=_inputs(document.get("inputs")),
    )


def epoch_millis(at: datetime) -> int:
    """Return an aware ``datetime`` as whole epoch milliseconds (the unit records are timed in)."""
    return (at - _EPOCH) // timedelta(milliseconds=1)


def hour_folders(start: datetime, end: datetime) -> list[str]:
    """Return the ``date=<YYYY-MM-DD>/hour=<HH>`` folders, relative to a model's folder, that
    can hold records generated in ``[start, end)``, oldest first (aware UTC bounds)."""
    hour = (start - FOLDER_REACH + _HOUR).replace(minute=0, second=0, microsecond=0)
    folders = []
    while hour < end:
        folders.append(f"date={hour:%Y-%m-%d}/hour={hour:%H}")
        hour += _HOUR
    return folders


def model_of_folder(name: str) -> str | None:
    """Return the model name of a ``model=<name>`` folder name; None for another folder."""
    model = name.removeprefix(MODEL_FOLDER_PREFIX)
    return model if model != name and model else None


def _generated_at_millis(value: Any) -> int:
    if not isinstance(value, str):
        raise MalformedRecordError("generated_at is not a string")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedRecordError(f"generated_at is not an ISO 8601 time: {value!r}") from None
    if at.tzinfo is None:
        raise MalformedRecordError(f"generated_at has no time zone: {value!r}")
    return epoch_millis(at)


def _inputs(value: Any) -> dict[str, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        item is None or is_finite_number(item) for item in value.values()
    ):
        raise MalformedRecordError("inputs is not null or an object of finite numbers and nulls")
    return {name: None if item is None else float(item) for name, item in value.items()}


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)
