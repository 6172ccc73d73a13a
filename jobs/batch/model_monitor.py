"""Hourly PySpark job: drift and online accuracy of the served models, published to CloudWatch.

The drift window is the ``--window-hours`` before ``--now``; the hit window is as long and
ends ``--outcome-hours`` plus ``--plays-lag-hours`` before ``--now``, so it holds the latest
predictions whose outcome the curated table already holds (the daily ETL writes a day's plays
after the day ends). The job:

1. reads the prediction log under ``--predictions`` (:mod:`jobs.monitoring.prediction_log`),
   only the hour folders that can hold records of the two windows; lines that are not valid
   records are counted (``MalformedRecords``) and skipped;
2. per model name and version of the drift window, reads the version's baseline from its
   model artifact (the records' ``model_artifact_uri``, each URI once;
   :mod:`jobs.monitoring.baseline`) and computes, for each input of the baseline, the PSI of
   the serving values (``FeatureDrift``) and the share of nulls (``FeatureMissingShare``),
   and the PSI of the top score of the model's rankings (``PredictionDrift``). A version
   without a readable baseline gets ``BaselineMissing`` = 1 and no drift figures;
3. judges each model ranking of the hit window: a hit when its member played one of its first
   ``--k`` titles within ``--outcome-hours`` of ``generated_at``, by the PLAY events of the
   curated interactions table at ``--interactions`` (``HitRateAtK``). The table must hold
   the plays up to ``--now`` minus ``--plays-lag-hours``, or the hit rate comes out too low;
4. publishes these and ``Predictions`` (the records of the drift window) to CloudWatch under
   ``--namespace``, timestamped ``--now``, and prints a one-line JSON summary of the run;
   with ``--dry-run`` it prints the metrics as JSON lines instead and publishes nothing.

Records with a fallback are not rankings of the model: they count for the inputs' figures and
``Predictions`` only. Dimensions are those of :mod:`jobs.monitoring.names`. Every model folder
of the log gets its per-model ``Predictions`` and ``MalformedRecords`` even when the window
holds none of its records, so an empty window shows as 0 rather than as missing data.

Exit status: 0 on success, also for an empty window; 1 when publishing fails; 2 for invalid
arguments or when the prediction log or the interactions table does not exist.

The module imports PySpark and boto3 only where they are used, like the other batch jobs.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobs.batch.spark_io import hadoop_path, path_exists, require_non_empty, utc_time
from jobs.monitoring import names
from jobs.monitoring.baseline import TOP_SCORE, Baseline, BaselineError, read_baseline, s3_client
from jobs.monitoring.prediction_log import (
    MalformedRecordError,
    Prediction,
    epoch_millis,
    hour_folders,
    model_of_folder,
    parse_prediction,
)
from jobs.monitoring.publish import Metric, PublishError, cloudwatch_client, publish
from jobs.monitoring.statistics import (
    bin_index,
    hit_rate,
    is_hit,
    population_stability_index,
    shares,
)

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import DataFrame, SparkSession

PROG = "model_monitor"
PLAY = "PLAY"
# The columns of the curated table that the hit rate needs; event_date is its partition.
INTERACTION_COLUMNS = (
    "member_id string, title_id string, event_type string, event_time timestamp, event_date date"
)
# The bin a null input is tallied in.
MISSING = -1
_REPORTED_MALFORMED = 3
# Serving's objects hold at most 5000 records each, so a task reads at most 160 000.
_OBJECTS_PER_TASK = 32

# A model name and one of its versions.
Version = tuple[str, str]
# A drift tally's key: the version, an input's name or TOP_SCORE, and the bin (or MISSING).
TallyKey = tuple[str, str, str, int]
# What the hit rate needs of a ranking: model, version, generated_at_ms and its first k titles.
Ranking = tuple[str, str, int, list[str]]
# A play of a member: the title and when, in epoch milliseconds.
Play = tuple[str, int]
# The figures of a version that its model's series repeats when it has the most predictions.
_DRIFT_FIGURES = frozenset(
    {names.FEATURE_DRIFT, names.FEATURE_MISSING_SHARE, names.PREDICTION_DRIFT}
)


class MonitorInputError(RuntimeError):
    """The prediction log or the interactions table is not where the arguments say."""


@dataclass(frozen=True)
class Window:
    """The times from ``start`` up to, not including, ``end`` (aware UTC)."""

    start: datetime
    end: datetime
    start_ms: int = field(init=False, repr=False)
    end_ms: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Records are timed in epoch milliseconds; converting the bounds once keeps the
        # per-record test an integer comparison.
        object.__setattr__(self, "start_ms", epoch_millis(self.start))
        object.__setattr__(self, "end_ms", epoch_millis(self.end))

    def holds(self, millis: int) -> bool:
        return self.start_ms <= millis < self.end_ms


@dataclass(frozen=True)
class Figure:
    """One figure of a version; ``feature`` names the input of the per-input figures."""

    name: str
    value: float
    feature: str | None = None


@dataclass
class VersionSummary:
    """What the run found for one model version.

    ``predictions`` counts its records in the drift window (0: it only has predictions in
    the hit window); ``baseline`` is None when it has none or it could not be read;
    ``tallies`` maps (input or TOP_SCORE, bin) to a count; ``judged`` and ``hits`` are its
    model rankings of the hit window and how many of them were followed by a play.
    """

    predictions: int = 0
    baseline: Baseline | None = None
    tallies: Mapping[tuple[str, int], int] = field(default_factory=dict)
    judged: int = 0
    hits: int = 0


@dataclass(frozen=True)
class Report:
    """The metrics of a run, and the summary printed after publishing them."""

    metrics: list[Metric]
    summary: dict[str, Any]


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the job."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Publish data drift, prediction drift and hit rate at K of served models.",
    )
    parser.add_argument(
        "--predictions", required=True, help="root of the prediction log (its model=* folders)"
    )
    parser.add_argument(
        "--interactions", required=True, help="location of the curated member_interactions"
    )
    parser.add_argument(
        "--now",
        type=utc_time,
        default=None,
        help="end of the drift window, ISO 8601 (without a zone: UTC; default: now)",
    )
    parser.add_argument(
        "--window-hours", type=_positive_int, default=24, help="length of the windows (24)"
    )
    parser.add_argument(
        "--outcome-hours",
        type=_positive_int,
        default=24,
        help="how long after a recommendation a play counts as its hit (24)",
    )
    parser.add_argument(
        "--plays-lag-hours",
        type=_non_negative_int,
        default=0,
        help="how far the interactions table lags behind --now (0)",
    )
    parser.add_argument(
        "--k", type=_positive_int, default=10, help="titles of a recommendation that count (10)"
    )
    parser.add_argument(
        "--namespace", default=names.NAMESPACE, help=f"CloudWatch namespace ({names.NAMESPACE})"
    )
    parser.add_argument("--region", required=True, help="region of CloudWatch and the artifacts")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the metrics as JSON lines, publish nothing"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``, exiting with a usage error that names the offending argument."""
    parser = build_parser()
    args = parser.parse_args(argv)
    require_non_empty(parser, args, ("predictions", "interactions", "namespace", "region"))
    if args.now is None:
        args.now = datetime.now(UTC)
    return args


def drift_window(args: argparse.Namespace) -> Window:
    return Window(args.now - timedelta(hours=args.window_hours), args.now)


def hit_window(args: argparse.Namespace) -> Window:
    end = args.now - timedelta(hours=args.outcome_hours + args.plays_lag_hours)
    return Window(end - timedelta(hours=args.window_hours), end)


def parse_line(line: str, *, folder_model: str) -> tuple[str, Prediction | str]:
    """Return the model of the line's folder with the line's record, or why it is malformed."""
    try:
        return folder_model, parse_prediction(line)
    except MalformedRecordError as exc:
        return folder_model, str(exc)


def record_bins(record: Prediction, baseline: Baseline) -> Iterator[tuple[str, int]]:
    """Yield the (input or TOP_SCORE, bin) pairs that ``record`` counts in.

    Each input of the baseline when the record has inputs (:data:`MISSING` for a null), and
    the top score when the record is a ranking of the model.
    """
    inputs = record["inputs"]
    if inputs is not None:
        for name, feature in baseline.features.items():
            value = inputs.get(name)
            yield name, MISSING if value is None else bin_index(value, feature.histogram.edges)
    if record["fallback"] is None and record["scores"]:
        yield TOP_SCORE, bin_index(record["scores"][0], baseline.top_score.edges)


def drift_tallies(
    records: Iterable[Prediction], *, baselines: Mapping[Version, Baseline]
) -> Iterator[tuple[TallyKey, int]]:
    """Count one Spark partition's records into the bins of their version's baseline.

    Records of versions without a baseline are not counted.
    """
    tallies: Counter[TallyKey] = Counter()
    for record in records:
        version = (record["model_name"], record["model_version"])
        baseline = baselines.get(version)
        if baseline is not None:
            for quantity, bin_ in record_bins(record, baseline):
                tallies[(*version, quantity, bin_)] += 1
    yield from tallies.items()


def member_hits(
    member: tuple[str, tuple[Iterable[Ranking], Iterable[Play]]],
    *,
    k: int,
    outcome_ms: int,
) -> Iterator[tuple[Version, tuple[int, int]]]:
    """Judge one member's rankings against the member's plays.

    ``member`` is a member id with its rankings ``(model, version, generated_at_ms,
    titles)`` and its plays ``(title, played_at_ms)``, as ``cogroup`` gives them. Yields
    ``(model, version), (1, 1 if a hit else 0)`` per ranking.
    """
    _, (rankings, plays) = member
    times_by_title: dict[str, list[int]] = defaultdict(list)
    for title, played_ms in plays:
        times_by_title[title].append(played_ms)
    for times in times_by_title.values():
        times.sort()
    for model, version, generated_ms, titles in rankings:
        hit = is_hit(titles, times_by_title, k=k, start=generated_ms, end=generated_ms + outcome_ms)
        yield (model, version), (1, int(hit))


def drift_figures(baseline: Baseline, tallies: Mapping[tuple[str, int], int]) -> list[Figure]:
    """Return a version's input and top-score figures from its tallies.

    A PSI without serving values, or a missing share without records with inputs, is left
    out: no data is not the same as no drift.
    """
    figures = []
    for name, feature in baseline.features.items():
        counts = _bin_counts(tallies, name, len(feature.histogram.proportions))
        missing = tallies.get((name, MISSING), 0)
        with_inputs = sum(counts) + missing
        if with_inputs:
            figures.append(Figure(names.FEATURE_MISSING_SHARE, missing / with_inputs, name))
        psi = population_stability_index(feature.histogram.proportions, shares(counts))
        if psi is not None:
            figures.append(Figure(names.FEATURE_DRIFT, psi, name))
    top_scores = _bin_counts(tallies, TOP_SCORE, len(baseline.top_score.proportions))
    psi = population_stability_index(baseline.top_score.proportions, shares(top_scores))
    if psi is not None:
        figures.append(Figure(names.PREDICTION_DRIFT, psi))
    return figures


def version_figures(summary: VersionSummary) -> list[Figure]:
    """Return every figure of one version."""
    figures = []
    if summary.predictions:
        figures.append(Figure(names.PREDICTIONS, summary.predictions))
        figures.append(Figure(names.BASELINE_MISSING, int(summary.baseline is None)))
        if summary.baseline is not None:
            figures.extend(drift_figures(summary.baseline, summary.tallies))
    rate = hit_rate(hits=summary.hits, predictions=summary.judged)
    if rate is not None:
        figures.append(Figure(names.HIT_RATE_AT_K, rate))
    return figures


def model_metrics(
    model: str, versions: Mapping[str, VersionSummary], *, malformed: int
) -> list[Metric]:
    """Return the metrics of one model: each version's series and the model's series."""
    figures = {version: version_figures(summary) for version, summary in sorted(versions.items())}
    metrics = [
        _metric(figure, model, version)
        for version, of_version in figures.items()
        for figure in of_version
    ]
    # Counts add up over versions. A PSI compares one version with its own baseline and a hit
    # rate belongs to one version's rankings, so neither adds up or averages into a figure of
    # the model: the model's series shows the version with the most predictions behind the
    # figure, the one most members get, which is what the model's alarms are about.
    in_window = [summary for summary in versions.values() if summary.predictions]
    metrics += [
        _metric(Figure(names.PREDICTIONS, sum(s.predictions for s in in_window)), model),
        _metric(Figure(names.BASELINE_MISSING, sum(s.baseline is None for s in in_window)), model),
        _metric(Figure(names.MALFORMED_RECORDS, malformed), model),
    ]
    drift_leader = _most(versions, lambda summary: summary.predictions)
    if drift_leader is not None:
        metrics += [
            _metric(figure, model)
            for figure in figures[drift_leader]
            if figure.name in _DRIFT_FIGURES
        ]
    hit_leader = _most(versions, lambda summary: summary.judged)
    if hit_leader is not None:
        metrics += [
            _metric(figure, model)
            for figure in figures[hit_leader]
            if figure.name == names.HIT_RATE_AT_K
        ]
    return metrics


def read_prediction_log(
    spark: SparkSession, root: str, windows: Sequence[Window]
) -> tuple[list[str], RDD]:
    """Return the models of the log's folders and the parsed lines (:func:`parse_line`) of
    the hour folders that can hold records of ``windows``."""
    if not path_exists(spark, root):
        raise MonitorInputError(f"prediction log not found: {root}")
    filesystem, root_path = hadoop_path(spark, root)
    model_folders = {
        model: status.getPath().toString()
        for status in filesystem.listStatus(root_path)
        if status.isDirectory() and (model := model_of_folder(status.getPath().getName()))
    }
    hours = sorted({hour for window in windows for hour in hour_folders(window.start, window.end)})
    context = spark.sparkContext
    parts = [
        context.textFile(folder).map(functools.partial(parse_line, folder_model=model))
        for model, model_folder in sorted(model_folders.items())
        for hour in hours
        if path_exists(spark, folder := f"{model_folder}/{hour}")
    ]
    objects = sum(part.getNumPartitions() for part in parts)
    if not objects:
        # One empty partition rather than none: the counting actions reduce over partitions
        # and fail on an RDD that has none.
        return sorted(model_folders), context.parallelize([], 1)
    # Serving writes many small objects, a partition each; reading several per task saves the
    # start-up of a task per object, in this and every later stage.
    tasks = -(-objects // _OBJECTS_PER_TASK)
    return sorted(model_folders), context.union(parts).coalesce(tasks)


def read_plays(spark: SparkSession, path: str, window: Window) -> DataFrame:
    """Return ``member_id``, ``title_id`` and ``played_ms`` (epoch milliseconds) of the PLAY
    events of ``window`` in the curated interactions table at ``path``."""
    from pyspark.sql import functions as sf

    played_ms = sf.unix_millis("event_time")
    last_day = (window.end - timedelta(milliseconds=1)).date()
    return (
        spark.read.schema(INTERACTION_COLUMNS)
        .parquet(path)
        # The date condition lets Spark skip the partitions outside the window.
        .where(sf.col("event_date").between(window.start.date(), last_day))
        .where(
            (sf.col("event_type") == PLAY)
            & sf.col("member_id").isNotNull()
            & sf.col("title_id").isNotNull()
            & (played_ms >= window.start_ms)
            & (played_ms < window.end_ms)
        )
        .select("member_id", "title_id", played_ms.alias("played_ms"))
    )


def run(spark: SparkSession, args: argparse.Namespace, *, s3: Any) -> Report:
    """Compute the metrics of the windows of ``args``; ``s3`` reads baselines on S3.

    Raises :class:`MonitorInputError` when the prediction log or the interactions table does
    not exist.
    """
    if __name__ != "__main__":
        # Executors then get the functions by value, so they need neither the checkout on
        # their path nor a --py-files archive; run as a script this is the default, and the
        # monitoring modules come from jobs.zip.
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        cloudpickle.register_pickle_by_value(sys.modules["jobs.monitoring"])
    from pyspark import StorageLevel

    if not path_exists(spark, args.interactions):
        raise MonitorInputError(f"interactions table not found: {args.interactions}")
    drift, hits = drift_window(args), hit_window(args)
    models, lines = read_prediction_log(spark, args.predictions, (drift, hits))
    # Every figure reads the parsed lines again; they may not fit in memory.
    lines.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        malformed = _count_malformed(lines)
        records = lines.values().filter(_is_record)
        versions = _drift_summaries(records, drift, s3=s3)
        for version, (judged, hit_count) in _hit_counts(spark, records, args, hits).items():
            summary = versions.setdefault(version, VersionSummary())
            summary.judged, summary.hits = judged, hit_count
    finally:
        lines.unpersist()
    by_model: dict[str, dict[str, VersionSummary]] = {model: {} for model in models}
    for (model, version), version_summary in versions.items():
        by_model.setdefault(model, {})[version] = version_summary
    metrics = [
        metric
        for model, model_versions in sorted(by_model.items())
        for metric in model_metrics(model, model_versions, malformed=malformed.get(model, 0))
    ]
    summary = {
        "drift_window": [drift.start.isoformat(), drift.end.isoformat()],
        "hit_window": [hits.start.isoformat(), hits.end.isoformat()],
        "models": len(by_model),
        "versions": len(versions),
        "predictions": sum(summary.predictions for summary in versions.values()),
        "judged": sum(summary.judged for summary in versions.values()),
        "malformed_records": sum(malformed.values()),
        "metrics": len(metrics),
    }
    return Report(metrics=metrics, summary=summary)


def main(argv: Sequence[str] | None = None, spark: SparkSession | None = None) -> int:
    """Entry point: compute and publish (or print) the metrics and return 0; or report and
    return 1 (publishing failed) or 2 (missing input)."""
    args = parse_args(argv)
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.builder.appName("model-monitor").getOrCreate()
    try:
        report = run(spark, args, s3=s3_client(args.region))
        if args.dry_run:
            for metric in report.metrics:
                print(metric.json_line(namespace=args.namespace, timestamp=args.now))
            return 0
        calls = publish(
            report.metrics,
            client=cloudwatch_client(args.region),
            namespace=args.namespace,
            timestamp=args.now,
        )
    except MonitorInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except PublishError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**report.summary, "put_metric_data_calls": calls}, sort_keys=True))
    return 0


def _count_malformed(lines: RDD) -> dict[str, int]:
    malformed = lines.filter(_is_malformed)
    counts = dict(malformed.countByKey())
    for model, reason in malformed.take(_REPORTED_MALFORMED):
        _warn(f"skipped a malformed line of model={model}: {reason}")
    return counts


def _drift_summaries(records: RDD, window: Window, *, s3: Any) -> dict[Version, VersionSummary]:
    in_window = records.filter(functools.partial(_generated_in, window=window))
    uri_counts = in_window.map(_version_and_uri).countByValue()
    predictions: Counter[Version] = Counter()
    uris: dict[Version, Counter[str]] = defaultdict(Counter)
    for (model, version, uri), count in uri_counts.items():
        predictions[(model, version)] += count
        uris[(model, version)][uri] += count
    baselines = _load_baselines(
        {version: _artifact_uri(version, counts) for version, counts in uris.items()}, s3=s3
    )
    tallies: dict[Version, dict[tuple[str, int], int]] = defaultdict(dict)
    if baselines:
        counted = in_window.mapPartitions(functools.partial(drift_tallies, baselines=baselines))
        for (model, version, quantity, bin_), count in counted.reduceByKey(operator.add).collect():
            tallies[(model, version)][(quantity, bin_)] = count
    return {
        version: VersionSummary(
            predictions=count, baseline=baselines.get(version), tallies=tallies[version]
        )
        for version, count in predictions.items()
    }


def _artifact_uri(version: Version, uri_counts: Counter[str]) -> str:
    uri, _ = uri_counts.most_common(1)[0]
    if len(uri_counts) > 1:
        _warn(
            f"{version[0]} {version[1]} names {len(uri_counts)} model artifacts; "
            f"reading the baseline of the most frequent, {uri}"
        )
    return uri


def _load_baselines(uris: Mapping[Version, str], *, s3: Any) -> dict[Version, Baseline]:
    # Each URI is read once, however many versions or records name it.
    loaded: dict[str, Baseline | BaselineError] = {}
    for uri in sorted(set(uris.values())):
        try:
            loaded[uri] = read_baseline(uri, s3_client=s3)
        except BaselineError as exc:
            loaded[uri] = exc
    baselines = {}
    for (model, version), uri in sorted(uris.items()):
        baseline = loaded[uri]
        if isinstance(baseline, BaselineError):
            _warn(f"{model} {version} has no baseline, so no drift figures: {baseline}")
        else:
            baselines[(model, version)] = baseline
    return baselines


def _hit_counts(
    spark: SparkSession, records: RDD, args: argparse.Namespace, window: Window
) -> dict[Version, tuple[int, int]]:
    rankings = records.filter(functools.partial(_is_ranking_in, window=window)).map(
        functools.partial(_ranking_of_member, k=args.k)
    )
    if rankings.isEmpty():
        return {}
    outcome_ms = args.outcome_hours * 3_600_000
    plays_window = Window(window.start, window.end + timedelta(hours=args.outcome_hours))
    plays = read_plays(spark, args.interactions, plays_window).rdd.map(_play_of_member)
    judged = rankings.cogroup(plays).flatMap(
        functools.partial(member_hits, k=args.k, outcome_ms=outcome_ms)
    )
    return dict(judged.reduceByKey(_add_pairs).collect())


def _is_record(item: Prediction | str) -> bool:
    return not isinstance(item, str)


def _is_malformed(line: tuple[str, Prediction | str]) -> bool:
    return isinstance(line[1], str)


def _generated_in(record: Prediction, *, window: Window) -> bool:
    return window.holds(record["generated_at_ms"])


def _is_ranking_in(record: Prediction, *, window: Window) -> bool:
    return record["fallback"] is None and window.holds(record["generated_at_ms"])


def _version_and_uri(record: Prediction) -> tuple[str, str, str]:
    return record["model_name"], record["model_version"], record["model_artifact_uri"]


def _ranking_of_member(record: Prediction, *, k: int) -> tuple[str, Ranking]:
    # Only the first k titles can make a hit, so only they travel through the shuffle.
    ranking = (
        record["model_name"],
        record["model_version"],
        record["generated_at_ms"],
        record["title_ids"][:k],
    )
    return record["member_id"], ranking


def _play_of_member(row: Any) -> tuple[str, Play]:
    return row.member_id, (row.title_id, row.played_ms)


def _add_pairs(left: tuple[int, int], right: tuple[int, int]) -> tuple[int, int]:
    return left[0] + right[0], left[1] + right[1]


def _bin_counts(tallies: Mapping[tuple[str, int], int], quantity: str, bins: int) -> list[int]:
    return [tallies.get((quantity, bin_), 0) for bin_ in range(bins)]


def _most(
    versions: Mapping[str, VersionSummary], count: Callable[[VersionSummary], int]
) -> str | None:
    # The version with the largest count, None when every count is 0; ties go to the greater
    # version string, so the choice never depends on the order the versions were found in.
    counted = [(count(summary), version) for version, summary in versions.items()]
    best_count, best_version = max(counted, default=(0, ""))
    return best_version if best_count else None


def _metric(figure: Figure, model: str, version: str | None = None) -> Metric:
    dimensions = [(names.MODEL_DIMENSION, model)]
    if version is not None:
        dimensions.append((names.MODEL_VERSION_DIMENSION, version))
    if figure.feature is not None:
        dimensions.append((names.FEATURE_DIMENSION, figure.feature))
    return Metric(figure.name, float(figure.value), tuple(dimensions))


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"not a whole number of hours: {value!r}")
    return number


if __name__ == "__main__":
    sys.exit(main())
