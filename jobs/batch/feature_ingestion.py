"""Batch ingestion of one day of member features into the SageMaker Feature Store.

Runs as an EMR step after ``interaction_etl``. For one ``--run-date`` the job:

1. reads ``<features path>/feature_date=<run date>/`` (the Parquet partition the ETL wrote)
   with an explicit schema;
2. turns every row into a Feature Store record (:func:`build_record`) and puts it into
   ``--feature-group`` with ``sagemaker-featurestore-runtime`` ``PutRecord`` from the
   executors, one client per partition, retrying throttling and server errors with capped
   exponential backoff;
3. when every record was put, writes a JSON marker to ``--marker-path``::

       {"feature_group", "run_date", "records",
        "newest_event_time": <epoch seconds>, "ingested_at": "<ISO 8601 UTC>"}

   which the feature-freshness Lambda reads. A failed run leaves an earlier marker as it was.

Exit status: 0 on success; 1 when any record failed (after printing how many and the first
failures); 2 when the partition is missing or has no rows (no record is put).

Re-running a date puts the same records again, which Feature Store treats as an update of each
member's record with the same event time.

The module imports neither PySpark nor boto3 at the top, so the CDK app can import
:data:`MEMBER_FEATURE_DEFINITIONS` to define the feature group without either installed.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from jobs.batch.spark_io import iso_date, path_exists, require_non_empty, write_text

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RECORD_IDENTIFIER = "member_id"
EVENT_TIME_FEATURE = "event_time"
# The feature group's feature definitions, in the order build_record emits them. Feature Store
# types: "String", "Integral" (64-bit integer) and "Fractional" (double).
MEMBER_FEATURE_DEFINITIONS: list[tuple[str, str]] = [
    ("member_id", "String"),
    ("plays_7d", "Integral"),
    ("plays_30d", "Integral"),
    ("completes_30d", "Integral"),
    ("completion_rate_30d", "Fractional"),
    ("distinct_titles_played_30d", "Integral"),
    ("total_watch_seconds_30d", "Integral"),
    ("thumbs_up_30d", "Integral"),
    ("thumbs_down_30d", "Integral"),
    ("last_event_time", "String"),
    ("favourite_device_30d", "String"),
    ("feature_date", "String"),
    ("event_time", "Fractional"),
]
FEATURE_STORE_SERVICE = "sagemaker-featurestore-runtime"
DEFAULT_MAX_ATTEMPTS = 5
# The columns of the ETL's member_features files; feature_date is the partition folder.
FEATURE_FILE_COLUMNS: list[tuple[str, str]] = [
    ("member_id", "string"),
    ("plays_7d", "bigint"),
    ("plays_30d", "bigint"),
    ("completes_30d", "bigint"),
    ("completion_rate_30d", "double"),
    ("distinct_titles_played_30d", "bigint"),
    ("total_watch_seconds_30d", "bigint"),
    ("thumbs_up_30d", "bigint"),
    ("thumbs_down_30d", "bigint"),
    ("last_event_time", "timestamp"),
    ("favourite_device_30d", "string"),
    ("event_time", "timestamp"),
]
_TIMESTAMP_COLUMNS = tuple(name for name, kind in FEATURE_FILE_COLUMNS if kind == "timestamp")
_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
    }
)
_MAX_REPORTED_FAILURES = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class IngestionInputError(RuntimeError):
    """The run date's feature partition is missing or has no rows; nothing was put."""


class IngestionFailed(RuntimeError):  # noqa: N818 - reads as the outcome it reports
    """Some records could not be put; the marker was not written."""

    def __init__(self, summary: IngestionSummary, total: int) -> None:
        self.summary = summary
        shown = "; ".join(summary.failures)
        more = summary.failed - len(summary.failures)
        super().__init__(
            f"{summary.failed} of {total} records failed to ingest"
            + (f"; first failures: {shown}" if shown else "")
            + (f"; and {more} more" if more > 0 else "")
        )


class PutRecordFailed(RuntimeError):  # noqa: N818 - reads as the outcome it reports
    """``PutRecord`` failed with a non-retryable error or on its last attempt."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently one record is put.

    The wait before retry ``n`` (1-based) is drawn uniformly from
    ``[0, min(max_delay_seconds, base_delay_seconds * 2 ** (n - 1)))`` ("full jitter"), which
    spreads the retries of many executors hitting the same throttle.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay_seconds: float = 0.1
    max_delay_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay_seconds < 0 or self.max_delay_seconds < 0:
            raise ValueError("retry delays must not be negative")

    def delay(self, retry: int, jitter: float) -> float:
        """Seconds to wait before retry number ``retry``, for a ``jitter`` in [0, 1)."""
        return jitter * min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (retry - 1))


@dataclass(frozen=True)
class IngestionSummary:
    """What one partition, or the whole job, ingested.

    ``newest_event_time_millis`` is the largest event time (epoch milliseconds) of a record
    that was put, ``None`` when none was; ``failures`` holds at most the first few messages.
    """

    succeeded: int = 0
    failed: int = 0
    newest_event_time_millis: int | None = None
    failures: tuple[str, ...] = ()

    def merge(self, other: IngestionSummary) -> IngestionSummary:
        newest = [
            millis
            for millis in (self.newest_event_time_millis, other.newest_event_time_millis)
            if millis is not None
        ]
        return IngestionSummary(
            succeeded=self.succeeded + other.succeeded,
            failed=self.failed + other.failed,
            newest_event_time_millis=max(newest) if newest else None,
            failures=(self.failures + other.failures)[:_MAX_REPORTED_FAILURES],
        )


ClientFactory = Callable[[str], Any]


def build_record(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """Return the Feature Store record of one member-features row.

    ``row`` maps every name of :data:`MEMBER_FEATURE_DEFINITIONS` to its value; timestamps are
    ``datetime`` objects (naive ones are taken as UTC) and ``feature_date`` is a ``date``.
    The record lists ``{"FeatureName", "ValueAsString"}`` in the definitions' order, leaving
    out null features. Values are written as:

    * Integral: the integer without decimals, e.g. ``"12"``;
    * Fractional: the shortest text that reads back as the same double (``repr``), e.g.
      ``"0.6666666666666666"``; ``event_time`` is epoch seconds with exactly three decimals,
      e.g. ``"1715385599.999"`` (sub-millisecond digits are dropped);
    * String: timestamps as ISO 8601 UTC with milliseconds and ``Z``, e.g.
      ``"2024-05-10T13:30:00.000Z"``; dates as ``YYYY-MM-DD``; text as it is.

    Raises ``ValueError`` when ``member_id`` or ``event_time`` is null (or ``member_id`` is
    empty), a column is absent, or a value does not fit its feature's type (including NaN and
    infinities, which Feature Store does not store).
    """
    member_id = row.get(RECORD_IDENTIFIER)
    if member_id is None or member_id == "":
        raise ValueError(
            f"{RECORD_IDENTIFIER} is null or empty; every record needs its record identifier"
        )
    if row.get(EVENT_TIME_FEATURE) is None:
        raise ValueError(
            f"{RECORD_IDENTIFIER}={member_id!r}: {EVENT_TIME_FEATURE} is null; every record "
            "needs its event time"
        )
    record = []
    for name, feature_type in MEMBER_FEATURE_DEFINITIONS:
        if name not in row:
            raise ValueError(f"{RECORD_IDENTIFIER}={member_id!r}: the row has no {name} column")
        value = row[name]
        if value is None:
            continue
        try:
            text = _format_value(feature_type, value)
        except ValueError as error:
            raise ValueError(f"{RECORD_IDENTIFIER}={member_id!r}: {name}: {error}") from None
        record.append({"FeatureName": name, "ValueAsString": text})
    return record


def is_retryable(error: BaseException) -> bool:
    """Whether a failed ``PutRecord`` is worth repeating: throttling (by error code or HTTP
    429), a 5xx answer, or a connection that failed or timed out."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotocoreConnectionError

    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in _THROTTLING_CODES or (
            isinstance(status, int) and (status == 429 or status >= 500)
        )
    return isinstance(error, BotocoreConnectionError | HTTPClientError)


def put_record_with_retries(
    client: Any,
    feature_group: str,
    record: list[dict[str, str]],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> int:
    """Put ``record`` into ``feature_group`` and return the number of attempts it took.

    Retryable errors (:func:`is_retryable`) are retried after :meth:`RetryPolicy.delay` until
    ``policy.max_attempts`` attempts were made. Raises :class:`PutRecordFailed`, chained to
    the last error, on a non-retryable error or when the attempts run out.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    attempt = 1
    while True:
        try:
            client.put_record(FeatureGroupName=feature_group, Record=record)
        except (ClientError, BotoCoreError) as error:
            if not is_retryable(error):
                raise PutRecordFailed(f"not retryable: {error}") from error
            if attempt >= policy.max_attempts:
                raise PutRecordFailed(f"gave up after {attempt} attempts: {error}") from error
            sleep(policy.delay(attempt, jitter()))
            attempt += 1
        else:
            return attempt


def featurestore_client(region: str) -> Any:
    """A Feature Store runtime client for ``region`` with botocore's own retries off, so
    :func:`put_record_with_retries` alone decides how often a record is tried."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        FEATURE_STORE_SERVICE,
        region_name=region,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=10,
        ),
    )


def ingest_partition(
    rows: Iterable[Any],
    *,
    feature_group: str,
    region: str,
    policy: RetryPolicy,
    client_factory: ClientFactory,
) -> Iterator[tuple[int, int, int | None, tuple[str, ...]]]:
    """Put the records of one Spark partition and yield its summary as one plain tuple,
    the fields of :class:`IngestionSummary` in order.

    ``rows`` are rows of :func:`read_partition`'s frame. The client is created from
    ``client_factory(region)`` at the first row, so empty partitions open no connection.
    """
    client = None
    summary = IngestionSummary()
    for row in rows:
        values = _with_datetimes(row.asDict())
        try:
            record = build_record(values)
            if client is None:
                client = client_factory(region)
            put_record_with_retries(client, feature_group, record, policy)
        # Every failure is counted against its record instead of failing the task: Spark would
        # retry the task and put the partition's other records again.
        except Exception as error:
            message = f"{RECORD_IDENTIFIER}={values.get(RECORD_IDENTIFIER)!r}: {error}"
            summary = summary.merge(IngestionSummary(failed=1, failures=(message,)))
        else:
            millis = _epoch_millis(values[EVENT_TIME_FEATURE])
            summary = summary.merge(IngestionSummary(succeeded=1, newest_event_time_millis=millis))
    # A tuple, because results travel back with plain pickle, which finds classes by module
    # name, and the executors need not be able to import this module.
    yield (
        summary.succeeded,
        summary.failed,
        summary.newest_event_time_millis,
        summary.failures,
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the job."""
    parser = argparse.ArgumentParser(
        prog="feature_ingestion",
        description="Put one day of member features into the SageMaker Feature Store.",
    )
    parser.add_argument("--features-path", required=True, help="location of member_features")
    parser.add_argument(
        "--run-date", required=True, type=iso_date, help="feature_date to ingest (YYYY-MM-DD)"
    )
    parser.add_argument("--feature-group", required=True, help="Feature Store feature group")
    parser.add_argument("--region", required=True, help="region of the feature group")
    parser.add_argument(
        "--marker-path",
        required=True,
        help="s3:// or local file the success marker is written to",
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"PutRecord attempts per record (default {DEFAULT_MAX_ATTEMPTS})",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, exiting with a usage error that names the offending argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_non_empty(parser, args, ("features_path", "feature_group", "region", "marker_path"))
    return args


def read_partition(spark: SparkSession, features_path: str, run_date: date) -> DataFrame:
    """Read the ``feature_date=<run_date>`` partition with the ETL's column types.

    Timestamps come back as epoch microseconds (``unix_micros``): turning Spark timestamps
    into Python objects would use the executor's local time zone. Raises
    :class:`IngestionInputError` when the partition folder does not exist.
    """
    from pyspark.sql import functions as sf

    path = f"{features_path.rstrip('/')}/feature_date={run_date.isoformat()}"
    if not path_exists(spark, path):
        raise IngestionInputError(f"feature partition not found: {path}")
    schema = ", ".join(f"{name} {kind}" for name, kind in FEATURE_FILE_COLUMNS)
    frame = spark.read.schema(schema).parquet(path)
    return frame.select(
        *(
            sf.unix_micros(name).alias(name) if name in _TIMESTAMP_COLUMNS else sf.col(name)
            for name, _ in FEATURE_FILE_COLUMNS
        ),
        sf.lit(run_date).alias("feature_date"),
    )


def run(
    spark: SparkSession,
    args: argparse.Namespace,
    client_factory: ClientFactory = featurestore_client,
    policy: RetryPolicy | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Ingest the partition of ``args`` and return the marker it wrote.

    ``client_factory`` is called on the executors, once per non-empty partition, with the
    region; it and ``policy`` (default: ``args.max_attempts`` and the standard delays) travel
    to the executors by pickling. Raises :class:`IngestionInputError` for a missing or empty
    partition and :class:`IngestionFailed` when any record failed; neither writes a marker.
    """
    if policy is None:
        policy = RetryPolicy(max_attempts=args.max_attempts)
    if __name__ != "__main__":
        # Executors then get this module's functions by value, so they need neither the
        # checkout on their path nor a --py-files archive; run as a script this is the default.
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    features = read_partition(spark, args.features_path, args.run_date)
    put_partition = functools.partial(
        ingest_partition,
        feature_group=args.feature_group,
        region=args.region,
        policy=policy,
        client_factory=client_factory,
    )
    summary = functools.reduce(
        IngestionSummary.merge,
        (IngestionSummary(*part) for part in features.rdd.mapPartitions(put_partition).collect()),
        IngestionSummary(),
    )
    total = summary.succeeded + summary.failed
    if total == 0:
        raise IngestionInputError(
            f"feature partition has no rows: {args.features_path.rstrip('/')}/"
            f"feature_date={args.run_date.isoformat()}"
        )
    if summary.failed:
        raise IngestionFailed(summary, total)
    assert summary.newest_event_time_millis is not None  # every record put has an event time
    marker = {
        "feature_group": args.feature_group,
        "run_date": args.run_date.isoformat(),
        "records": summary.succeeded,
        "newest_event_time": summary.newest_event_time_millis / 1000,
        "ingested_at": _iso_utc(clock()),
    }
    write_text(spark, args.marker_path, json.dumps(marker, indent=2) + "\n")
    return marker


def main(
    argv: Sequence[str] | None = None,
    spark: SparkSession | None = None,
    client_factory: ClientFactory = featurestore_client,
) -> int:
    """Entry point: ingest, print the marker and return 0; or report and return 1 (failed
    records) or 2 (missing or empty partition)."""
    args = parse_args(argv)
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.appName(
            f"member-feature-ingestion-{args.run_date.isoformat()}"
        ).getOrCreate()
    try:
        marker = run(spark, args, client_factory=client_factory)
    except IngestionInputError as error:
        print(f"feature_ingestion: error: {error}", file=sys.stderr)
        return 2
    except IngestionFailed as error:
        print(
            f"feature_ingestion: error: {args.feature_group} {args.run_date.isoformat()}: "
            f"{error}; {error.summary.succeeded} succeeded; no marker written",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(marker, sort_keys=True))
    return 0


def _format_value(feature_type: str, value: Any) -> str:
    if feature_type == "Integral":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return str(value)
    if feature_type == "Fractional":
        if isinstance(value, datetime):
            return f"{Decimal(_epoch_millis(value)).scaleb(-3):f}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return repr(float(value))
    if feature_type == "String":
        if isinstance(value, datetime):
            return _iso_utc(value)
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, str):
            return value
        raise ValueError(f"expected text, a date or a timestamp, got {value!r}")
    raise ValueError(f"unknown feature type {feature_type!r}")


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch_millis(value: datetime) -> int:
    return (_as_utc(value) - _EPOCH) // timedelta(milliseconds=1)


def _iso_utc(value: datetime) -> str:
    return _as_utc(value).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _with_datetimes(values: dict[str, Any]) -> dict[str, Any]:
    for name in _TIMESTAMP_COLUMNS:
        if values.get(name) is not None:
            values[name] = _EPOCH + timedelta(microseconds=values[name])
    return values


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {value!r}")
    return number


if __name__ == "__main__":
    sys.exit(main())
