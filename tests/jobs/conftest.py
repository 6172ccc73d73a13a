"""Fixtures for the workload tests: the event schema and one local Spark session per run."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "schemas" / "avro" / "member_interaction_event.avsc"

# The jobs are shipped to EMR as plain packages rather than installed, so the tests import
# them from the checkout whichever directory pytest was started from.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def schema_path() -> Path:
    """Path of the MemberInteractionEvent Avro schema in the repository."""
    return SCHEMA_PATH


@pytest.fixture(scope="session")
def event_schema() -> dict:
    """The parsed Avro schema of MemberInteractionEvent from the repository."""
    from jobs.streaming.records import load_schema

    return load_schema(SCHEMA_PATH)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A single-core local SparkSession with an in-memory catalog in a temporary warehouse."""
    from pyspark.sql import SparkSession

    # PySpark turns timestamps into naive datetimes in the process's local zone and the JVM
    # takes its default zone from TZ, so both are pinned before the JVM starts.
    os.environ["TZ"] = "UTC"
    time.tzset()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = (
        SparkSession.builder.master("local[1]")
        .appName("jobs-tests")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
