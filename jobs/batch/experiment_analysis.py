"""Daily PySpark job: the observations of the A/B experiments under analysis, written to
ABlaze's results table, where ABlaze analyses them when it reads them.

The job:

1. scans ABlaze's experiments table (``--experiments-table``) on the driver and keeps the
   experiments to analyse at ``--now``: running ones, and those closed (stopped, or past
   their end) less than 7 days ago, each over its window from its start until ``--now`` or
   its close (:mod:`jobs.experiments.documents`). A document it cannot read is reported in
   one line and skipped;
2. reads the prediction log under ``--predictions``, the date folders that can hold records
   of the windows: each member's first record of an experiment within its window is their
   exposure, which gives their cell and the time their outcomes count from
   (:mod:`jobs.experiments.exposures`). Lines that are not valid records, or that name a
   cell their experiment lacks, are counted and skipped, the first few reported;
3. counts each exposed member's PLAY and COMPLETE events in the curated interactions at
   ``--interactions`` from the exposure to the window's end, which give the metrics:
   ``play_rate`` (1 with a play, else 0), ``completion_rate`` (1 with a completion, else 0)
   and ``plays_per_member`` (the plays);
4. writes one item per experiment into ``--results-table``, computed at ``--now``: each
   cell's members and, per metric of the experiment, the count, mean and sample variance of
   the members' values, in the format :mod:`jobs.experiments` describes; then prints a
   one-line JSON summary. With ``--dry-run`` it prints the items as JSON lines instead (as
   DynamoDB attribute values, exactly as they would be put) and writes nothing.

The curated table receives a day's events when the daily ETL has run, so the outcomes of the
latest members are not complete yet. That holds in every cell alike, so the comparison stays
fair, and the next run counts them in.

Exit status: 0 on success, also with nothing to analyse; 1 when reading the experiments
table or writing a result fails; 2 for invalid arguments, or when the prediction log, the
interactions table or a DynamoDB table does not exist.

The module imports PySpark and boto3 only where they are used, like the other batch jobs.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobs.batch.spark_io import hadoop_path, path_exists, require_non_empty, utc_time
from jobs.experiments.documents import ExperimentPlan, Window, analysis_window
from jobs.experiments.exposures import FirstSeen, MemberKey, Scope, earliest, parse_exposure
from jobs.experiments.observations import (
    METRICS,
    CellObservations,
    metric_sample,
    observations_json,
    results_item,
)
from jobs.experiments.tables import (
    TableError,
    TableMissingError,
    dynamodb_client,
    read_experiments,
    write_items,
)
from jobs.monitoring.prediction_log import (
    MODEL_FOLDER_PREFIX,
    MalformedRecordError,
    epoch_millis,
    hour_folders,
)

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import Column, DataFrame, SparkSession

PROG = "experiment_analysis"
PLAY, COMPLETE = "PLAY", "COMPLETE"
# The columns of the curated table that the outcomes need; event_date is its partition.
INTERACTION_COLUMNS = "member_id string, event_type string, event_time timestamp, event_date date"
EXPOSURE_COLUMNS = (
    "experiment_id string, member_id string, cell string, exposed_ms long, end_ms long, "
    "conflict boolean"
)
_REPORTED_MALFORMED = 3
# Serving's objects hold at most 5000 records each, so a task reads at most 160 000.
_OBJECTS_PER_TASK = 32


class AnalysisInputError(RuntimeError):
    """The prediction log or the interactions table is not where the arguments say."""


@dataclass(frozen=True, kw_only=True)
class Analysis:
    """An experiment under analysis and the window it is analysed over."""

    plan: ExperimentPlan
    window: Window


@dataclass(frozen=True, kw_only=True)
class Measured:
    """What the run measured of one experiment: the cells members were exposed in, and the
    members seen in more than one cell."""

    cells: Mapping[str, CellObservations]
    cell_conflicts: int


@dataclass(frozen=True, kw_only=True)
class Report:
    """The results items of a run, and the summary printed after writing them."""

    items: list[dict[str, dict[str, str]]]
    summary: dict[str, Any]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the job."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write the per-cell observations of ABlaze's experiments to its results.",
    )
    parser.add_argument(
        "--predictions", required=True, help="root of the prediction log (its model=* folders)"
    )
    parser.add_argument(
        "--interactions", required=True, help="location of the curated member_interactions"
    )
    parser.add_argument(
        "--experiments-table", required=True, help="ABlaze's experiments table (read)"
    )
    parser.add_argument("--results-table", required=True, help="ABlaze's results table (written)")
    parser.add_argument("--region", required=True, help="region of the two tables")
    parser.add_argument(
        "--now",
        type=utc_time,
        default=None,
        help="time of the analysis, ISO 8601 (without a zone: UTC; default: now)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the items as JSON lines, write nothing"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, exiting with a usage error that names the offending argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_non_empty(
        parser,
        args,
        ("predictions", "interactions", "experiments_table", "results_table", "region"),
    )
    if args.now is None:
        args.now = datetime.now(UTC)
    return args


def to_analyse(plans: Iterable[ExperimentPlan], *, now: datetime) -> list[Analysis]:
    """The experiments of ``plans`` that are analysed at ``now``, with their windows."""
    return [
        Analysis(plan=plan, window=window)
        for plan in plans
        if (window := analysis_window(plan, now=now)) is not None
    ]


def log_date_folders(windows: Iterable[Window]) -> list[str]:
    """The ``date=<YYYY-MM-DD>`` folders of a model's log that can hold records of
    ``windows``, oldest first."""
    return sorted(
        {
            folder.split("/")[0]
            for window in windows
            for folder in hour_folders(window.start, window.end)
        }
    )


def exposure_or_reason(
    line: str, *, scopes: Mapping[str, Scope]
) -> tuple[MemberKey, FirstSeen] | str | None:
    """The exposure on ``line`` (:func:`parse_exposure`), None, or why the line is malformed."""
    try:
        return parse_exposure(line, scopes=scopes)
    except MalformedRecordError as exc:
        return str(exc)


def exposure_row(
    exposure: tuple[MemberKey, FirstSeen], *, end_ms: Mapping[str, int]
) -> tuple[str, str, str, int, int, bool]:
    """A member's first exposure as a row of :data:`EXPOSURE_COLUMNS`."""
    (experiment, member), (exposed_ms, cell, conflict) = exposure
    return experiment, member, cell, exposed_ms, end_ms[experiment], conflict


def metric_columns() -> dict[str, Column]:
    """Each metric of :data:`~jobs.experiments.observations.METRICS` as a member's value,
    from the member's ``plays`` and ``completes``."""
    from pyspark.sql import functions as sf

    plays, completes = sf.col("plays"), sf.col("completes")
    return {
        "play_rate": (plays > 0).cast("double"),
        "completion_rate": (completes > 0).cast("double"),
        "plays_per_member": plays.cast("double"),
    }


def measured_experiments(rows: Iterable[Mapping[str, Any]]) -> dict[str, Measured]:
    """The measurements per experiment from the per-cell rows of :func:`cell_statistics`:
    ``experiment_id``, ``cell``, ``members``, ``conflicts`` and per metric a
    ``{"mean", "variance"}``."""
    cells: dict[str, dict[str, CellObservations]] = {}
    conflicts: dict[str, int] = {}
    for row in rows:
        experiment = row["experiment_id"]
        cells.setdefault(experiment, {})[row["cell"]] = CellObservations(
            members=row["members"],
            metrics={
                metric: metric_sample(
                    n=row["members"], mean=row[metric]["mean"], variance=row[metric]["variance"]
                )
                for metric in METRICS
            },
        )
        conflicts[experiment] = conflicts.get(experiment, 0) + row["conflicts"]
    return {
        experiment: Measured(cells=of_experiment, cell_conflicts=conflicts[experiment])
        for experiment, of_experiment in cells.items()
    }


def result_items(
    analyses: Iterable[Analysis], measured: Mapping[str, Measured], *, computed_at: datetime
) -> list[dict[str, dict[str, str]]]:
    """One results item per analysed experiment; one nobody was exposed in has empty cells."""
    nothing = Measured(cells={}, cell_conflicts=0)
    items = []
    for analysis in analyses:
        found = measured.get(analysis.plan.id, nothing)
        observations = observations_json(
            analysis.plan,
            analysis.window,
            cells=found.cells,
            cell_conflicts=found.cell_conflicts,
        )
        items.append(
            results_item(analysis.plan.id, computed_at=computed_at, observations=observations)
        )
    return items


def read_prediction_log(spark: SparkSession, root: str, windows: Sequence[Window]) -> RDD:
    """The lines of the log's date folders that can hold records of ``windows``."""
    context = spark.sparkContext
    dates = log_date_folders(windows)
    # One glob lists only the wanted dates of every model; records outside the windows that
    # the folders hold as well are left out when parsed.
    pattern = f"{root.rstrip('/')}/{MODEL_FOLDER_PREFIX}*/{{{','.join(dates)}}}/hour=*"
    filesystem, pattern_path = hadoop_path(spark, pattern)
    folders = [
        status.getPath().toString()
        for status in filesystem.globStatus(pattern_path) or []
        if status.isDirectory()
    ]
    if not folders:
        # One empty partition rather than none: the counting actions reduce over partitions
        # and fail on an RDD that has none.
        return context.parallelize([], 1)
    lines = context.textFile(",".join(folders))
    # Serving writes many small objects, a partition each; reading several per task saves the
    # start-up of a task per object, in this and every later stage.
    return lines.coalesce(-(-lines.getNumPartitions() // _OBJECTS_PER_TASK))


def read_outcomes(spark: SparkSession, path: str, windows: Sequence[Window]) -> DataFrame:
    """``member_id``, ``event_type`` and ``event_ms`` (epoch milliseconds) of the PLAY and
    COMPLETE events from the first window's start to the last one's end."""
    from pyspark.sql import functions as sf

    start = min(window.start for window in windows)
    end = max(window.end for window in windows)
    event_ms = sf.unix_millis("event_time")
    last_day = (end - timedelta(milliseconds=1)).date()
    return (
        spark.read.schema(INTERACTION_COLUMNS)
        .parquet(path)
        # The date condition lets Spark skip the partitions outside the windows.
        .where(sf.col("event_date").between(start.date(), last_day))
        .where(
            sf.col("event_type").isin(PLAY, COMPLETE)
            & sf.col("member_id").isNotNull()
            & (event_ms >= epoch_millis(start))
            & (event_ms < epoch_millis(end))
        )
        .select("member_id", "event_type", event_ms.alias("event_ms"))
    )


def cell_statistics(exposures: DataFrame, outcomes: DataFrame) -> list[Any]:
    """Per experiment and cell: ``members``, ``conflicts`` and per metric the ``mean`` and
    ``variance`` (sample, null below two members) of the members' values."""
    from pyspark.sql import functions as sf

    events = outcomes.withColumnRenamed("member_id", "event_member")
    after_exposure = (
        (exposures.member_id == events.event_member)
        & (events.event_ms >= exposures.exposed_ms)
        & (events.event_ms < exposures.end_ms)
    )
    event_type = sf.col("event_type")
    per_member = (
        exposures.join(events, after_exposure, "left")
        .groupBy("experiment_id", "member_id", "cell", "conflict")
        .agg(
            sf.count(sf.when(event_type == PLAY, 1)).alias("plays"),
            sf.count(sf.when(event_type == COMPLETE, 1)).alias("completes"),
        )
    )
    metrics = [
        sf.struct(sf.avg(value).alias("mean"), sf.var_samp(value).alias("variance")).alias(name)
        for name, value in metric_columns().items()
    ]
    return (
        per_member.groupBy("experiment_id", "cell")
        .agg(
            sf.count(sf.lit(1)).alias("members"),
            sf.sum(sf.col("conflict").cast("long")).alias("conflicts"),
            *metrics,
        )
        .collect()
    )


def run(spark: SparkSession, args: argparse.Namespace, analyses: Sequence[Analysis]) -> Report:
    """Measure ``analyses`` over the log and the table ``args`` name; raise
    :class:`AnalysisInputError` when either does not exist."""
    if __name__ != "__main__":
        # Executors then get the functions by value, so they need neither the checkout on
        # their path nor a --py-files archive; run as a script this is the default, and the
        # packages come from jobs.zip.
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        cloudpickle.register_pickle_by_value(sys.modules["jobs.experiments"])
        cloudpickle.register_pickle_by_value(sys.modules["jobs.monitoring"])
    for name, path in (
        ("prediction log", args.predictions),
        ("interactions table", args.interactions),
    ):
        if not path_exists(spark, path):
            raise AnalysisInputError(f"{name} not found: {path}")
    malformed, measured = 0, {}
    if analyses:
        malformed, measured = _measure(spark, args, analyses)
    items = result_items(analyses, measured, computed_at=args.now)
    summary = {
        "now": args.now.isoformat(),
        "experiments": len(analyses),
        "exposed_members": sum(
            cell.members for found in measured.values() for cell in found.cells.values()
        ),
        "cell_conflicts": sum(found.cell_conflicts for found in measured.values()),
        "malformed_records": malformed,
        "items": len(items),
    }
    return Report(items=items, summary=summary)


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Entry point: measure and write (or print) the items and return 0; or report and
    return 1 (a table read or write failed) or 2 (missing input)."""
    args = parse_args(argv)
    try:
        client = dynamodb_client(args.region)
        scan = read_experiments(client=client, table=args.experiments_table)
        for reason in scan.skipped:
            _warn(f"skipped {reason}")
        if spark is None:
            from pyspark.sql import SparkSession

            spark = SparkSession.builder.appName("experiment-analysis").getOrCreate()
        report = run(spark, args, to_analyse(scan.plans, now=args.now))
        if args.dry_run:
            for item in report.items:
                print(json.dumps(item, sort_keys=True))
            return 0
        write_items(report.items, client=client, table=args.results_table)
    except (AnalysisInputError, TableMissingError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except TableError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**report.summary, "skipped_documents": len(scan.skipped)}, sort_keys=True))
    return 0


def _measure(
    spark: SparkSession, args: argparse.Namespace, analyses: Sequence[Analysis]
) -> tuple[int, dict[str, Measured]]:
    """The malformed lines of the log, and the measurements of the exposed experiments."""
    from pyspark import StorageLevel

    windows = [analysis.window for analysis in analyses]
    scopes = {analysis.plan.id: Scope.of(analysis.plan, analysis.window) for analysis in analyses}
    lines = read_prediction_log(spark, args.predictions, windows)
    parsed = lines.map(functools.partial(exposure_or_reason, scopes=scopes)).filter(_is_found)
    # Counting the malformed lines and the exposures both read the parsed lines.
    parsed.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        malformed = _count_malformed(parsed)
        first = parsed.filter(_is_exposure).reduceByKey(earliest)
        end_ms = {experiment: scope.end_ms for experiment, scope in scopes.items()}
        exposures = spark.createDataFrame(
            first.map(functools.partial(exposure_row, end_ms=end_ms)), EXPOSURE_COLUMNS
        )
        rows = cell_statistics(exposures, read_outcomes(spark, args.interactions, windows))
    finally:
        parsed.unpersist()
    return malformed, measured_experiments(rows)


def _count_malformed(parsed: RDD) -> int:
    malformed = parsed.filter(_is_malformed)
    count = malformed.count()
    for reason in malformed.take(_REPORTED_MALFORMED):
        _warn(f"skipped a malformed line of the prediction log: {reason}")
    return count


def _is_found(item: tuple | str | None) -> bool:
    return item is not None


def _is_malformed(item: tuple | str) -> bool:
    return isinstance(item, str)


def _is_exposure(item: tuple | str) -> bool:
    return not isinstance(item, str)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
