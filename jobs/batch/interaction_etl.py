"""Daily PySpark ETL from the raw interaction zone to curated events and member features.

For one ``--run-date`` (a UTC ``event_date``) the job:

1. reads the JSON lines the streaming job landed under ``<raw>/event_date=<run date>/`` with an
   explicit schema;
2. checks every row and quarantines the failures, each with one reason, under
   ``<quarantine>/run_date=<run date>/`` -- no row is dropped without being counted;
3. replaces the ``event_date=<run date>`` partition of the curated Parquet table
   ``<curated db>.member_interactions`` (located at ``--curated-path``) with the valid rows;
4. recomputes per-member features over the 30 days ending on the run date from the curated
   table and replaces the ``feature_date=<run date>`` partition of
   ``<features db>.member_features`` (located at ``--features-path``);
5. optionally writes a JSON document of row counts to ``--metrics-path``.

Re-running a date gives the same tables and counts. Dates are computed from epoch
milliseconds, so results do not depend on the session time zone; the job still pins it to UTC
so timestamps display consistently. The catalog databases must already exist (on EMR the Glue
Data Catalog, reached through Spark's Hive support).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as sf
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

from jobs.batch.spark_io import (
    hadoop_path,
    iso_date,
    path_exists,
    require_non_empty,
    write_text,
)
from jobs.layout import CURATED_TABLE, FEATURES_TABLE

EVENT_TYPES = ("IMPRESSION", "PLAY", "COMPLETE", "THUMBS_UP", "THUMBS_DOWN", "ADD_TO_LIST")
REQUIRED_FIELDS = (
    "event_id",
    "member_id",
    "title_id",
    "event_type",
    "event_time",
    "device_type",
    "country",
)
FEATURE_WINDOW_DAYS = 30
SHORT_WINDOW_DAYS = 7
REASON_COLUMN = "quarantine_reason"
CORRUPT_COLUMN = "_corrupt_record"

RAW_SCHEMA = StructType(
    [
        StructField("event_id", StringType()),
        StructField("member_id", StringType()),
        StructField("title_id", StringType()),
        StructField("event_type", StringType()),
        StructField("event_time", LongType()),
        StructField("watch_seconds", IntegerType()),
        StructField("device_type", StringType()),
        StructField("country", StringType()),
        StructField(CORRUPT_COLUMN, StringType()),
    ]
)
_MILLIS_PER_DAY = 86_400_000
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EtlInputError(RuntimeError):
    """Raised when the job's inputs or catalog are not in the state the run needs."""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the job."""
    parser = argparse.ArgumentParser(
        prog="interaction_etl",
        description="Curate one day of raw member interactions and compute member features.",
    )
    parser.add_argument("--raw-path", required=True, help="raw zone root of the streaming job")
    parser.add_argument(
        "--run-date", required=True, type=iso_date, help="event_date to process (YYYY-MM-DD)"
    )
    parser.add_argument("--curated-path", required=True, help="location of member_interactions")
    parser.add_argument("--features-path", required=True, help="location of member_features")
    parser.add_argument("--quarantine-path", required=True, help="root for rejected rows")
    parser.add_argument(
        "--curated-database", required=True, type=_identifier, help="catalog db for curated data"
    )
    parser.add_argument(
        "--features-database", required=True, type=_identifier, help="catalog db for features"
    )
    parser.add_argument(
        "--metrics-path",
        default=None,
        help="optional file for the run's counts as JSON; a path ending in / is a prefix under "
        "which <run date>.json is written",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, exiting with a usage error that names the offending argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_non_empty(
        parser, args, ("raw_path", "curated_path", "features_path", "quarantine_path")
    )
    return args


def read_raw_events(spark: SparkSession, raw_path: str, run_date: date) -> DataFrame:
    """Read the raw JSON lines of ``run_date`` with :data:`RAW_SCHEMA`.

    Unparseable lines are kept with their text in ``_corrupt_record``. Raises
    :class:`EtlInputError` when the date's partition does not exist.
    """
    path = f"{raw_path.rstrip('/')}/event_date={run_date.isoformat()}"
    if not path_exists(spark, path):
        raise EtlInputError(f"raw partition not found: {path}")
    return (
        spark.read.schema(RAW_SCHEMA)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_COLUMN)
        # The hourly event_hour=HH folders are read as plain files: the hour is derivable
        # from event_time, and partition inference would add a column the schema lacks.
        .option("recursiveFileLookup", "true")
        .json(path)
    )


def check_events(raw: DataFrame, run_date: date) -> DataFrame:
    """Return ``raw`` with a ``quarantine_reason`` column, null for rows that are valid.

    A row gets the first matching reason of: ``malformed_record``, ``missing_<field>`` for a
    null required field, ``unknown_event_type``, ``negative_watch_seconds``,
    ``event_date_mismatch`` (its UTC date is not ``run_date``), and ``duplicate_event_id`` for
    every otherwise valid row but the earliest (by ``event_time``) of each ``event_id``.
    """
    reason = sf.when(sf.col(CORRUPT_COLUMN).isNotNull(), sf.lit("malformed_record"))
    for field in REQUIRED_FIELDS:
        reason = reason.when(sf.col(field).isNull(), sf.lit(f"missing_{field}"))
    reason = (
        reason.when(~sf.col("event_type").isin(*EVENT_TYPES), sf.lit("unknown_event_type"))
        .when(sf.col("watch_seconds") < 0, sf.lit("negative_watch_seconds"))
        .when(_utc_date(sf.col("event_time")) != sf.lit(run_date), sf.lit("event_date_mismatch"))
    )
    checked = raw.withColumn(REASON_COLUMN, reason)
    # Rank only among rows that passed the other checks, so a broken copy of an event never
    # displaces its valid twin; the trailing keys make the kept row deterministic.
    first_of_event = Window.partitionBy("event_id", sf.col(REASON_COLUMN).isNull()).orderBy(
        "event_time",
        "member_id",
        "title_id",
        "event_type",
        "device_type",
        "country",
        sf.col("watch_seconds").asc_nulls_first(),
    )
    rank = sf.row_number().over(first_of_event)
    return checked.withColumn(
        REASON_COLUMN,
        sf.when(
            sf.col(REASON_COLUMN).isNull() & (rank > 1), sf.lit("duplicate_event_id")
        ).otherwise(sf.col(REASON_COLUMN)),
    )


def curate_events(checked: DataFrame) -> DataFrame:
    """Return the valid rows of ``checked`` in the curated table's columns and types."""
    valid = checked.where(sf.col(REASON_COLUMN).isNull())
    return valid.select(
        "event_id",
        "member_id",
        "title_id",
        "event_type",
        sf.timestamp_millis("event_time").alias("event_time"),
        "watch_seconds",
        "device_type",
        "country",
        _utc_date(sf.col("event_time")).alias("event_date"),
    )


def quarantined_rows(checked: DataFrame) -> DataFrame:
    """Return the rejected rows of ``checked`` with their reason and raw text."""
    return checked.where(sf.col(REASON_COLUMN).isNotNull()).withColumnRenamed(
        CORRUPT_COLUMN, "raw_record"
    )


def compute_member_features(curated: DataFrame, run_date: date) -> DataFrame:
    """Compute one feature row per member with an event in the 30 days ending on ``run_date``.

    ``curated`` has the curated table's columns and may span any dates; rows after
    ``run_date`` or before the window are ignored. Columns:

    * ``plays_7d`` / ``plays_30d``: PLAY events in the last 7 / 30 days (inclusive);
    * ``completes_30d``: COMPLETE events; ``completion_rate_30d``: completes / plays, capped at
      1.0 (a completion may follow a play from before the window), null without plays;
    * ``distinct_titles_played_30d``: titles with a PLAY or COMPLETE event;
    * ``total_watch_seconds_30d``: sum of ``watch_seconds`` over all events (0 if none);
    * ``thumbs_up_30d`` / ``thumbs_down_30d``: rating events;
    * ``last_event_time``: latest event in the window;
    * ``favourite_device_30d``: device with most events, ties broken alphabetically;
    * ``feature_date``: ``run_date``; ``event_time``: the last millisecond of ``run_date``
      (UTC), the as-of time the feature store records.
    """
    window_start = run_date - timedelta(days=FEATURE_WINDOW_DAYS - 1)
    short_start = run_date - timedelta(days=SHORT_WINDOW_DAYS - 1)
    events = curated.where(sf.col("event_date").between(sf.lit(window_start), sf.lit(run_date)))
    is_play = sf.col("event_type") == "PLAY"
    in_short_window = sf.col("event_date") >= sf.lit(short_start)

    aggregates = events.groupBy("member_id").agg(
        sf.count(sf.when(is_play & in_short_window, True)).alias("plays_7d"),
        sf.count(sf.when(is_play, True)).alias("plays_30d"),
        sf.count(sf.when(sf.col("event_type") == "COMPLETE", True)).alias("completes_30d"),
        sf.countDistinct(
            sf.when(sf.col("event_type").isin("PLAY", "COMPLETE"), sf.col("title_id"))
        ).alias("distinct_titles_played_30d"),
        sf.coalesce(sf.sum("watch_seconds"), sf.lit(0))
        .cast("long")
        .alias("total_watch_seconds_30d"),
        sf.count(sf.when(sf.col("event_type") == "THUMBS_UP", True)).alias("thumbs_up_30d"),
        sf.count(sf.when(sf.col("event_type") == "THUMBS_DOWN", True)).alias("thumbs_down_30d"),
        sf.max("event_time").alias("last_event_time"),
    )
    device_rank = Window.partitionBy("member_id").orderBy(sf.desc("events"), sf.asc("device_type"))
    favourite_device = (
        events.groupBy("member_id", "device_type")
        .agg(sf.count(sf.lit(1)).alias("events"))
        .withColumn("rank", sf.row_number().over(device_rank))
        .where(sf.col("rank") == 1)
        .select("member_id", sf.col("device_type").alias("favourite_device_30d"))
    )
    as_of = datetime.combine(run_date + timedelta(days=1), time(), UTC)
    as_of_millis = int(as_of.timestamp() * 1000) - 1
    completion_rate = sf.when(
        sf.col("plays_30d") > 0,
        sf.least(sf.lit(1.0), sf.col("completes_30d") / sf.col("plays_30d")),
    )
    return aggregates.join(favourite_device, "member_id").select(
        "member_id",
        "plays_7d",
        "plays_30d",
        "completes_30d",
        completion_rate.cast("double").alias("completion_rate_30d"),
        "distinct_titles_played_30d",
        "total_watch_seconds_30d",
        "thumbs_up_30d",
        "thumbs_down_30d",
        "last_event_time",
        "favourite_device_30d",
        sf.lit(run_date).alias("feature_date"),
        sf.timestamp_millis(sf.lit(as_of_millis)).alias("event_time"),
    )


def overwrite_partition(
    spark: SparkSession,
    rows: DataFrame,
    table: str,
    path: str,
    partition_column: str,
    partition_value: date,
) -> None:
    """Make ``rows`` the whole content of one date partition of a Parquet catalog table.

    Every row must carry ``partition_value`` in ``partition_column``. Switches the session to
    dynamic partition overwrite, which is what keeps other partitions intact. A missing table is
    created with ``saveAsTable`` at ``path`` (partitions already under ``path`` are kept and
    registered). An existing table gets a dynamic partition overwrite, which replaces only the
    partition the rows belong to. When there are no rows, the partition's files are deleted
    instead, since a dynamic overwrite of nothing would leave a previous run's data behind; its
    catalog entry is kept, so the job never needs permission to delete catalog partitions.
    """
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    if not spark.catalog.tableExists(table):
        (
            rows.write.format("parquet")
            .mode("overwrite")
            .option("path", path)
            .partitionBy(partition_column)
            .saveAsTable(table)
        )
        return
    columns = spark.table(table).columns
    if not rows.isEmpty():
        rows.select(*columns).write.insertInto(table, overwrite=True)
        return
    location = _table_location(spark, table).rstrip("/")
    filesystem, partition_path = hadoop_path(
        spark, f"{location}/{partition_column}={partition_value.isoformat()}"
    )
    if filesystem.exists(partition_path):
        filesystem.delete(partition_path, True)
        filesystem.mkdirs(partition_path)
    spark.catalog.refreshTable(table)


def metrics_file(metrics_path: str, run_date: date) -> str:
    """Return the metrics file for ``--metrics-path``: itself, or ``<prefix><run date>.json``."""
    if metrics_path.endswith("/"):
        return f"{metrics_path}{run_date.isoformat()}.json"
    return metrics_path


def run(spark: SparkSession, args: argparse.Namespace) -> dict[str, Any]:
    """Execute the ETL for ``args`` on ``spark`` and return the run's counts."""
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    for database in (args.curated_database, args.features_database):
        if not spark.catalog.databaseExists(database):
            raise EtlInputError(f"catalog database does not exist: {database}")
    curated_table = f"{args.curated_database}.{CURATED_TABLE}"
    features_table = f"{args.features_database}.{FEATURES_TABLE}"

    checked = check_events(read_raw_events(spark, args.raw_path, args.run_date), args.run_date)
    # Cached so the JSON is parsed once for counting, quarantining and curating; this also
    # satisfies Spark's rule against querying the corrupt-record column straight from a scan.
    checked.cache()
    try:
        reason_counts = {
            row[REASON_COLUMN]: row["count"]
            for row in checked.groupBy(REASON_COLUMN).count().collect()
        }
        quarantined_rows(checked).write.mode("overwrite").json(
            f"{args.quarantine_path.rstrip('/')}/run_date={args.run_date.isoformat()}"
        )
        overwrite_partition(
            spark,
            curate_events(checked),
            curated_table,
            args.curated_path,
            "event_date",
            args.run_date,
        )
    finally:
        checked.unpersist()

    features = compute_member_features(spark.table(curated_table), args.run_date)
    overwrite_partition(
        spark, features, features_table, args.features_path, "feature_date", args.run_date
    )

    valid_rows = reason_counts.pop(None, 0)
    metrics = {
        "run_date": args.run_date.isoformat(),
        "rows_read": valid_rows + sum(reason_counts.values()),
        "rows_valid": valid_rows,
        "rows_quarantined": sum(reason_counts.values()),
        "quarantined_by_reason": dict(sorted(reason_counts.items())),
        "curated_rows": _partition_count(spark, curated_table, "event_date", args.run_date),
        "feature_rows": _partition_count(spark, features_table, "feature_date", args.run_date),
    }
    if args.metrics_path:
        write_text(
            spark,
            metrics_file(args.metrics_path, args.run_date),
            json.dumps(metrics, indent=2, sort_keys=True),
        )
    return metrics


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Entry point: run the ETL, returning 0, or 2 after reporting an input problem.

    Without ``spark`` a Hive-enabled session is created, which on EMR is backed by the Glue
    Data Catalog.
    """
    args = parse_args(argv)
    if spark is None:
        spark = (
            SparkSession.builder.appName(f"member-interaction-etl-{args.run_date.isoformat()}")
            .enableHiveSupport()
            .getOrCreate()
        )
    try:
        metrics = run(spark, args)
    except EtlInputError as exc:
        print(f"interaction_etl: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, sort_keys=True))
    return 0


def _utc_date(epoch_millis: Column) -> Column:
    # Integer arithmetic instead of to_date() keeps the date independent of the session zone.
    return sf.date_from_unix_date(sf.floor(epoch_millis / _MILLIS_PER_DAY).cast("int"))


def _table_location(spark: SparkSession, table: str) -> str:
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect():
        if row.col_name == "Location":
            return row.data_type
    raise EtlInputError(f"catalog table has no location: {table}")


def _partition_count(spark: SparkSession, table: str, column: str, value: date) -> int:
    return spark.table(table).where(sf.col(column) == sf.lit(value)).count()


def _identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not a catalog identifier: {value!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
