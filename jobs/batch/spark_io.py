"""File-system and argument helpers shared by the batch jobs.

Hadoop's FileSystem reads and writes s3:// on EMR and local paths in tests alike, so the
jobs need no boto3 for their own files. On EMR the jobs run with `--py-files jobs.zip`,
which puts this package on the driver's and executors' path.
"""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def hadoop_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    """The Hadoop FileSystem serving `path`, and `path` as a Hadoop Path."""
    jvm = spark.sparkContext._jvm
    path_object = jvm.org.apache.hadoop.fs.Path(path)
    return path_object.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path_object


def path_exists(spark: SparkSession, path: str) -> bool:
    filesystem, path_object = hadoop_path(spark, path)
    return bool(filesystem.exists(path_object))


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Writes (replacing) a small UTF-8 text file, e.g. a run's metrics or a marker."""
    filesystem, path_object = hadoop_path(spark, path)
    stream = filesystem.create(path_object, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def utc_time(value: str) -> datetime:
    """argparse type: an ISO 8601 time, read as UTC when it names no zone."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def iso_date(value: str) -> date:
    """argparse type for YYYY-MM-DD dates."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {value!r}") from None


def require_non_empty(
    parser: argparse.ArgumentParser, args: argparse.Namespace, flags: tuple[str, ...]
) -> None:
    """Usage error (exit 2) naming the first of `flags` given as a blank string."""
    for flag in flags:
        if not getattr(args, flag).strip():
            parser.error(f"--{flag.replace('_', '-')} must not be empty")
