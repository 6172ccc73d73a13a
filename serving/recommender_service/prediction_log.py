"""The prediction log: every prediction record, appended to S3 for model monitoring.

With ``PREDICTION_LOG_URI`` set, each record the service writes to the predictions table,
served or shadow, is also queued here; a background thread hands them over in batches (every
``PREDICTION_LOG_FLUSH_SECONDS``, at ``LOG_BATCH_RECORDS`` records, and at shutdown) and
:meth:`PredictionLog.write` puts one object per batch and model name::

    <prefix>model=<model_name>/date=<YYYY-MM-DD>/hour=<HH>/<uuid4 hex>.jsonl.gz

dated by the UTC time of the object's first record. An object is gzip JSON Lines, one
object per record (:func:`log_line`), so Athena, Glue and Spark read the log as a table
partitioned by model, date and hour. ``inputs`` are the monitored model inputs of
:mod:`training.recommender.inputs`, computed here, off the response path, over the history
the request was ranked with; they are null when that history could not be read.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from serving.recommender_service.logs import LOGGER, one_line
from serving.recommender_service.store import PredictionRecord
from training.recommender.inputs import input_features

LOG_BATCH_RECORDS = 5000
# Two full batches: one being put while the next one gathers.
LOG_QUEUE_CAPACITY = 2 * LOG_BATCH_RECORDS
# Level 6 is zlib's own default: most of level 9's size for a fraction of its time.
GZIP_LEVEL = 6


@dataclass(frozen=True)
class LoggedPrediction:
    """A prediction record and what the monitor needs beside it.

    ``history`` is the member's history the ranking left out, or None when it could not be
    read; ``title_positives`` are the training positives of the model that ranked.
    """

    record: PredictionRecord
    model_artifact_uri: str
    fallback: str | None
    history: Sequence[str] | None
    title_positives: Mapping[str, int]


class PredictionLog:
    """Puts batches of logged predictions into S3 as gzip JSON Lines objects."""

    def __init__(self, *, s3_client: Any, bucket: str, prefix: str) -> None:
        self._s3 = s3_client
        self._bucket = bucket
        self._prefix = prefix

    def write(self, entries: Sequence[LoggedPrediction]) -> list[LoggedPrediction]:
        """Put one object per model name; return the entries of the objects not put.

        Blocks, so it runs on a background thread.
        """
        lost: list[LoggedPrediction] = []
        for model_name, group in _by_model_name(entries).items():
            key = object_key(
                self._prefix, model_name=model_name, first_at=group[0].record.generated_at
            )
            try:
                body = gzip.compress(
                    b"".join(_json_line(entry) for entry in group), compresslevel=GZIP_LEVEL
                )
                # The bucket's default KMS key applies; naming none keeps key policy in the stack.
                self._s3.put_object(
                    Bucket=self._bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/gzip",
                    ServerSideEncryption="aws:kms",
                )
            # botocore raises many types (throttling, access, network); a record that cannot be
            # serialised loses its object too. Either way the caller counts the records lost.
            except Exception as exc:
                LOGGER.warning(
                    "prediction log: cannot put s3://%s/%s, its %d records are lost: %s: %s",
                    self._bucket,
                    key,
                    len(group),
                    type(exc).__name__,
                    one_line(exc),
                )
                lost.extend(group)
        return lost


def object_key(prefix: str, *, model_name: str, first_at: datetime) -> str:
    """The key of a new object whose first record was generated at ``first_at``."""
    at = first_at.astimezone(UTC)
    return f"{prefix}model={model_name}/date={at:%Y-%m-%d}/hour={at:%H}/{uuid.uuid4().hex}.jsonl.gz"


def log_line(entry: LoggedPrediction) -> dict[str, Any]:
    """The JSON object of one logged prediction."""
    record = entry.record
    return {
        "member_id": record.member_id,
        "model_name": record.model_name,
        "model_version": record.model_version,
        "model_artifact_uri": entry.model_artifact_uri,
        "generated_at": _utc_milliseconds(record.generated_at),
        "title_ids": list(record.title_ids),
        "scores": list(record.scores),
        "fallback": entry.fallback,
        "experiment": record.experiment,
        "cell": record.cell,
        "inputs": (
            None if entry.history is None else input_features(entry.history, entry.title_positives)
        ),
    }


def _json_line(entry: LoggedPrediction) -> bytes:
    # NaN or infinity would make a line that strict JSON readers (Athena) reject.
    text = json.dumps(log_line(entry), separators=(",", ":"), allow_nan=False)
    return text.encode() + b"\n"


def _utc_milliseconds(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def _by_model_name(entries: Sequence[LoggedPrediction]) -> dict[str, list[LoggedPrediction]]:
    groups: dict[str, list[LoggedPrediction]] = {}
    for entry in entries:
        groups.setdefault(entry.record.model_name, []).append(entry)
    return groups
