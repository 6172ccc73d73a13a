"""Tests for jobs.batch.model_monitor: its parts on hand-made values, then two runs on a real
local Spark session: a prediction log with planted drift and known hits (dry run), and an
empty window published to a mocked CloudWatch."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from jobs.batch import model_monitor as monitor
from jobs.monitoring import names
from jobs.monitoring.baseline import parse_baseline
from jobs.monitoring.publish import cloudwatch_client
from jobs.monitoring.statistics import population_stability_index as psi

# PySpark 3.5 leaves the sockets it reads collect() results from to the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
NOW = datetime(2026, 12, 2, 17, 0, tzinfo=UTC)
MODEL = "recommender"
SHADOW = "recommender-shadow"
RETIRED = "retired"
HISTORY_LENGTH, HISTORY_POPULARITY = "history_length", "history_popularity"
BASELINE_DOCUMENT = {
    "format": 1,
    "features": {
        HISTORY_LENGTH: {"edges": [5.0, 10.0], "proportions": [0.2, 0.5, 0.3], "missing_share": 0},
        HISTORY_POPULARITY: {"edges": [1.0], "proportions": [0.5, 0.5], "missing_share": 0},
    },
    "top_score": {"edges": [0.0, 1.0], "proportions": [0.25, 0.5, 0.25]},
    "sample_size": {HISTORY_LENGTH: 100, HISTORY_POPULARITY: 100, "top_score": 100},
}
BASELINE = parse_baseline(BASELINE_DOCUMENT)
LENGTH_SHARES = [0.2, 0.5, 0.3]
POPULARITY_SHARES = [0.5, 0.5]
TOP_SCORE_SHARES = [0.25, 0.5, 0.25]


def args(*extra: str) -> list[str]:
    return ["--predictions", "/log", "--interactions", "/table", "--region", REGION, *extra]


# --- arguments and windows ----------------------------------------------------------------


def test_windows_end_at_now_and_outcome_hours_before_it():
    parsed = monitor.parse_args(
        args("--now", "2026-12-02T17:00:00Z", "--window-hours", "6", "--outcome-hours", "24")
    )

    assert monitor.drift_window(parsed) == monitor.Window(NOW - timedelta(hours=6), NOW)
    assert monitor.hit_window(parsed) == monitor.Window(
        NOW - timedelta(hours=30), NOW - timedelta(hours=24)
    )
    assert (parsed.k, parsed.namespace, parsed.dry_run) == (10, names.NAMESPACE, False)


def test_the_hit_window_waits_for_the_plays_of_the_curated_table():
    parsed = monitor.parse_args(
        args("--now", "2026-12-02T17:00:00Z", "--window-hours", "6", "--outcome-hours", "24",
             "--plays-lag-hours", "30")
    )  # fmt: skip

    assert monitor.hit_window(parsed) == monitor.Window(
        NOW - timedelta(hours=60), NOW - timedelta(hours=54)
    )
    assert monitor.drift_window(parsed) == monitor.Window(NOW - timedelta(hours=6), NOW)


def test_a_negative_lag_is_refused(capsys):
    with pytest.raises(SystemExit):
        monitor.parse_args(args("--plays-lag-hours", "-1"))
    assert "not a whole number of hours: '-1'" in capsys.readouterr().err


def test_a_time_without_a_zone_is_utc():
    assert monitor.parse_args(args("--now", "2026-12-02T17:00")).now == NOW
    assert monitor.parse_args(args("--now", "2026-12-02T18:00+01:00")).now == NOW


def test_now_defaults_to_the_current_time():
    before = datetime.now(UTC)

    now = monitor.parse_args(args()).now

    assert before <= now <= datetime.now(UTC)


def test_a_window_holds_its_start_but_not_its_end():
    window = monitor.Window(NOW - timedelta(hours=1), NOW)
    end = int(NOW.timestamp() * 1000)

    assert [window.holds(end - 3_600_000), window.holds(end - 1), window.holds(end)] == [
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--now", "yesterday"], "argument --now: not an ISO 8601 time: 'yesterday'"),
        (["--k", "0"], "argument --k: not a positive integer: '0'"),
        (["--window-hours", "x"], "argument --window-hours: not a positive integer: 'x'"),
        (["--region", " "], "--region must not be empty"),
        (["--namespace", ""], "--namespace must not be empty"),
    ],
)
def test_rejects_bad_arguments_in_one_line(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        monitor.parse_args(args(*extra))

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"model_monitor: error: {message}"


def test_modules_import_without_pyspark_or_boto3():
    # Mapping a module to None in sys.modules makes importing it fail, as if uninstalled; the
    # CDK app imports the metric names without either.
    script = (
        "import sys\n"
        "for name in ('pyspark', 'boto3', 'botocore'):\n"
        "    sys.modules[name] = None\n"
        "import jobs.batch.model_monitor\n"
        "from jobs.monitoring import baseline, names, prediction_log, publish, statistics\n"
        "print(names.NAMESPACE)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )

    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "MLPlatform/ModelMonitoring\n",
        "",
    )


# --- the figures, without Spark -------------------------------------------------------------


def prediction(**changes: Any) -> dict[str, Any]:
    record = {
        "member_id": "m1",
        "model_name": MODEL,
        "model_version": "v1",
        "model_artifact_uri": "/models/v1",
        "generated_at_ms": 0,
        "title_ids": ["t1", "t2"],
        "scores": [0.5, 0.1],
        "fallback": None,
        "inputs": {HISTORY_LENGTH: 12.0, HISTORY_POPULARITY: None},
    }
    return {**record, **changes}


def test_a_ranking_counts_its_inputs_and_its_top_score():
    bins = list(monitor.record_bins(prediction(), BASELINE))

    assert bins == [(HISTORY_LENGTH, 2), (HISTORY_POPULARITY, monitor.MISSING), ("top_score", 1)]


def test_a_fallback_counts_its_inputs_only():
    bins = list(monitor.record_bins(prediction(fallback="popularity"), BASELINE))

    assert bins == [(HISTORY_LENGTH, 2), (HISTORY_POPULARITY, monitor.MISSING)]


def test_a_record_without_inputs_counts_its_top_score_only():
    assert list(monitor.record_bins(prediction(inputs=None), BASELINE)) == [("top_score", 1)]


def test_an_empty_ranking_has_no_top_score():
    bins = list(monitor.record_bins(prediction(title_ids=[], scores=[], inputs=None), BASELINE))

    assert bins == []


def test_an_input_the_record_lacks_counts_as_missing():
    bins = list(monitor.record_bins(prediction(inputs={HISTORY_LENGTH: 1.0}), BASELINE))

    assert bins[:2] == [(HISTORY_LENGTH, 0), (HISTORY_POPULARITY, monitor.MISSING)]


def test_drift_tallies_count_per_version_and_skip_versions_without_a_baseline():
    records = [prediction(), prediction(), prediction(model_version="v2")]

    tallies = dict(monitor.drift_tallies(records, baselines={(MODEL, "v1"): BASELINE}))

    assert tallies == {
        (MODEL, "v1", HISTORY_LENGTH, 2): 2,
        (MODEL, "v1", HISTORY_POPULARITY, monitor.MISSING): 2,
        (MODEL, "v1", "top_score", 1): 2,
    }


def test_drift_figures_compare_the_tallies_with_the_baseline():
    tallies = {
        (HISTORY_LENGTH, 0): 1,
        (HISTORY_LENGTH, 2): 3,
        (HISTORY_POPULARITY, 1): 3,
        (HISTORY_POPULARITY, monitor.MISSING): 1,
        ("top_score", 1): 2,
    }

    figures = monitor.drift_figures(BASELINE, tallies)

    assert figures == [
        monitor.Figure(names.FEATURE_MISSING_SHARE, 0.0, HISTORY_LENGTH),
        monitor.Figure(names.FEATURE_DRIFT, psi(LENGTH_SHARES, [0.25, 0, 0.75]), HISTORY_LENGTH),
        monitor.Figure(names.FEATURE_MISSING_SHARE, 0.25, HISTORY_POPULARITY),
        monitor.Figure(names.FEATURE_DRIFT, psi(POPULARITY_SHARES, [0, 1]), HISTORY_POPULARITY),
        monitor.Figure(names.PREDICTION_DRIFT, psi(TOP_SCORE_SHARES, [0, 1, 0])),
    ]


def test_no_serving_values_give_no_psi_and_no_records_no_missing_share():
    tallies = {(HISTORY_POPULARITY, monitor.MISSING): 2}

    figures = monitor.drift_figures(BASELINE, tallies)

    assert figures == [monitor.Figure(names.FEATURE_MISSING_SHARE, 1.0, HISTORY_POPULARITY)]


def test_a_version_without_a_baseline_reports_it_and_keeps_its_hit_rate():
    summary = monitor.VersionSummary(predictions=5, baseline=None, judged=4, hits=1)

    assert monitor.version_figures(summary) == [
        monitor.Figure(names.PREDICTIONS, 5),
        monitor.Figure(names.BASELINE_MISSING, 1),
        monitor.Figure(names.HIT_RATE_AT_K, 0.25),
    ]


def test_a_version_only_in_the_hit_window_has_only_its_hit_rate():
    summary = monitor.VersionSummary(judged=2, hits=2)

    assert monitor.version_figures(summary) == [monitor.Figure(names.HIT_RATE_AT_K, 1.0)]


def as_table(metrics: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(metric.name, metric.dimensions): metric.value for metric in metrics}


def dims(model: str, version: str | None = None, feature: str | None = None) -> tuple:
    pairs = [("Model", model), ("ModelVersion", version), ("Feature", feature)]
    return tuple((name, value) for name, value in pairs if value is not None)


def is_model_series(key: tuple[str, tuple[tuple[str, str], ...]]) -> bool:
    return "ModelVersion" not in dict(key[1])


def test_the_model_series_adds_counts_and_follows_the_busiest_version_per_figure():
    drifting = {(HISTORY_LENGTH, 2): 3, ("top_score", 2): 3}
    steady = {(HISTORY_LENGTH, 1): 1, ("top_score", 1): 1}
    versions = {
        # The most predictions in the drift window, but none judged yet.
        "v2": monitor.VersionSummary(predictions=3, baseline=BASELINE, tallies=drifting),
        "v1": monitor.VersionSummary(
            predictions=1, baseline=BASELINE, tallies=steady, judged=4, hits=1
        ),
        "v0": monitor.VersionSummary(predictions=2, baseline=None, judged=2, hits=2),
    }

    table = as_table(monitor.model_metrics(MODEL, versions, malformed=7))

    model_series = {key: value for key, value in table.items() if is_model_series(key)}
    assert model_series == {
        (names.PREDICTIONS, dims(MODEL)): 6,
        (names.BASELINE_MISSING, dims(MODEL)): 1,
        (names.MALFORMED_RECORDS, dims(MODEL)): 7,
        (names.FEATURE_MISSING_SHARE, dims(MODEL, feature=HISTORY_LENGTH)): 0.0,
        (names.FEATURE_DRIFT, dims(MODEL, feature=HISTORY_LENGTH)): psi(LENGTH_SHARES, [0, 0, 1]),
        (names.PREDICTION_DRIFT, dims(MODEL)): psi(TOP_SCORE_SHARES, [0, 0, 1]),
        (names.HIT_RATE_AT_K, dims(MODEL)): 0.25,
    }
    assert table[(names.HIT_RATE_AT_K, dims(MODEL, "v0"))] == 1.0
    assert table[(names.FEATURE_DRIFT, dims(MODEL, "v1", HISTORY_LENGTH))] == psi(
        LENGTH_SHARES, [0, 1, 0]
    )


def test_ties_between_versions_go_to_the_greater_version():
    versions = {
        "a": monitor.VersionSummary(
            predictions=2, baseline=BASELINE, tallies={("top_score", 0): 2}
        ),
        "b": monitor.VersionSummary(
            predictions=2, baseline=BASELINE, tallies={("top_score", 2): 2}
        ),
    }

    table = as_table(monitor.model_metrics(MODEL, versions, malformed=0))

    assert table[(names.PREDICTION_DRIFT, dims(MODEL))] == psi(TOP_SCORE_SHARES, [0, 0, 1])


def test_a_model_without_records_publishes_zero_counts_only():
    table = as_table(monitor.model_metrics(RETIRED, {}, malformed=0))

    assert table == {
        (names.PREDICTIONS, dims(RETIRED)): 0,
        (names.BASELINE_MISSING, dims(RETIRED)): 0,
        (names.MALFORMED_RECORDS, dims(RETIRED)): 0,
    }


def test_member_hits_judge_each_ranking_against_the_members_plays():
    member = (
        "m1",
        (
            [(MODEL, "v1", 1_000, ["t1", "t2"]), (MODEL, "v2", 5_000, ["t3"])],
            [("t2", 1_500), ("t3", 9_000), ("t3", 4_000)],
        ),
    )

    judged = list(monitor.member_hits(member, k=2, outcome_ms=1_000))

    # v1: t2 at 1500 is within [1000, 2000); v2: t3 at 4000 is before and 9000 after [5000, 6000).
    assert judged == [((MODEL, "v1"), (1, 1)), ((MODEL, "v2"), (1, 0))]


def test_a_member_with_plays_but_no_rankings_is_not_judged():
    assert list(monitor.member_hits(("m2", ([], [("t1", 1)])), k=10, outcome_ms=10)) == []


# --- the job on Spark ---------------------------------------------------------------------


def millis(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_record(
    member: str,
    version: str,
    at: datetime,
    *,
    uri: str,
    titles: list[str] | None = None,
    scores: list[float] | None = None,
    fallback: str | None = None,
    inputs: dict[str, float | None] | None = None,
    model: str = MODEL,
) -> dict[str, Any]:
    titles = ["t1"] if titles is None else titles
    return {
        "member_id": member,
        "model_name": model,
        "model_version": version,
        "model_artifact_uri": uri,
        "generated_at": millis(at),
        "title_ids": titles,
        "scores": [0.5] * len(titles) if scores is None else scores,
        "fallback": fallback,
        "experiment": None,
        "cell": None,
        "inputs": inputs,
    }


@dataclass(frozen=True)
class Planted:
    """The planted log, table and artifacts of a run."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "raw" / "predictions"

    @property
    def interactions(self) -> Path:
        return self.root / "curated" / "member_interactions"

    def artifact(self, version: str) -> Path:
        return self.root / "models" / version

    def write_lines(self, model: str, folder_hour: datetime, lines: list[str]) -> None:
        folder = self.log / f"model={model}" / f"date={folder_hour:%Y-%m-%d}/hour={folder_hour:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        with gzip.open(folder / f"{uuid.uuid4().hex}.jsonl.gz", "wt", encoding="utf-8") as file:
            file.writelines(f"{line}\n" for line in lines)

    def write_records(self, model: str, records: list[dict[str, Any]]) -> None:
        """Files each record under the hour of its generated_at."""
        by_hour: dict[datetime, list[str]] = {}
        for record in records:
            at = datetime.fromisoformat(record["generated_at"])
            by_hour.setdefault(at.replace(minute=0, second=0, microsecond=0), []).append(
                json.dumps(record)
            )
        for hour, lines in by_hour.items():
            self.write_lines(model, hour, lines)

    def write_events(self, events: list[tuple[str, str, str, datetime]]) -> None:
        """Writes (member, title, event type, time) rows as the ETL's curated partitions."""
        by_date: dict[str, list[tuple[str, str, str, datetime]]] = {}
        for event in events:
            by_date.setdefault(event[3].date().isoformat(), []).append(event)
        for day, rows in by_date.items():
            folder = self.interactions / f"event_date={day}"
            folder.mkdir(parents=True)
            table = pa.table(
                {
                    "event_id": [f"e{day}-{index}" for index in range(len(rows))],
                    "member_id": [row[0] for row in rows],
                    "title_id": [row[1] for row in rows],
                    "event_type": [row[2] for row in rows],
                    "event_time": pa.array([row[3] for row in rows], pa.timestamp("us", "UTC")),
                    "watch_seconds": pa.array([None] * len(rows), pa.int32()),
                    "device_type": ["tv"] * len(rows),
                    "country": ["DE"] * len(rows),
                }
            )
            pq.write_table(table, folder / "part-00000.parquet")

    def argv(self, *extra: str) -> list[str]:
        return [
            "--predictions",
            str(self.log),
            "--interactions",
            str(self.interactions),
            "--now",
            NOW.isoformat(),
            "--region",
            REGION,
            *extra,
        ]


def model_archive(path: Path, document: dict[str, Any]) -> str:
    """Writes a model.tar.gz whose baseline.json holds ``document``; returns its path."""
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, content in (("model.pt", b"weights"), ("baseline.json", json.dumps(document))):
            data = content if isinstance(content, bytes) else content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


DRIFT_AT = NOW - timedelta(hours=3)
HIT_AT = NOW - timedelta(hours=30)
OTHER_HIT_AT = NOW - timedelta(hours=40)
V1_TOP_SCORES = [-0.5, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 2.0]


def plant(root: Path) -> Planted:
    """The log of three model folders:

    ``recommender``: v1 (baseline in a folder) drifts in history_length (every value in the
    top bin), 2 of its 10 records lack history_popularity, 2 are fallbacks with a top score
    that would land in the top bin; of its 4 rankings in the hit window 1 is a hit. v2
    (baseline in an archive) matches its baseline's shape; v3 has only fallbacks; v4's
    folder has no baseline, and 1 of its 2 rankings in the hit window is a hit. Two lines
    are malformed. ``recommender-shadow`` has 2 records of v2. ``retired`` has none in the
    windows.
    """
    planted = Planted(root)
    planted.artifact("v1").mkdir(parents=True)
    (planted.artifact("v1") / "baseline.json").write_text(json.dumps(BASELINE_DOCUMENT))
    v1 = str(planted.artifact("v1"))
    v2 = model_archive(planted.artifact("v2") / "model.tar.gz", BASELINE_DOCUMENT)
    v3 = model_archive(planted.artifact("v3") / "model.tar.gz", BASELINE_DOCUMENT)
    planted.artifact("v4").mkdir(parents=True)
    (planted.artifact("v4") / "metrics.json").write_text("{}")
    v4 = str(planted.artifact("v4"))

    def inputs(length: float, popularity: float | None) -> dict[str, float | None]:
        return {HISTORY_LENGTH: length, HISTORY_POPULARITY: popularity}

    popularities = [None, None, 0.5, 0.5, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]
    v1_drift = [
        log_record(
            f"d{index}", "v1", DRIFT_AT, uri=v1, scores=[score], inputs=inputs(12, popularity)
        )
        for index, (score, popularity) in enumerate(
            zip([*V1_TOP_SCORES, 99.0, 99.0], popularities, strict=True)
        )
    ]
    for record in v1_drift[-2:]:
        record["fallback"] = "store_timeout"
    # Generated in the window's first minutes, filed under the hour before it by its batch.
    late = v1_drift[0]
    late["generated_at"] = millis(NOW - timedelta(hours=24) + timedelta(minutes=10))
    planted.write_lines(MODEL, NOW - timedelta(hours=25), [json.dumps(late)])
    planted.write_records(MODEL, v1_drift[1:])
    v1_hits = [
        log_record("u1", "v1", HIT_AT, uri=v1, titles=["a", "b", "c"]),
        log_record("u2", "v1", HIT_AT, uri=v1, titles=["a", "b"]),
        log_record("u3", "v1", HIT_AT, uri=v1, titles=[f"t{index:02d}" for index in range(1, 12)]),
        log_record("u4", "v1", HIT_AT, uri=v1, titles=["a"]),
        log_record("u5", "v1", HIT_AT, uri=v1, titles=["a"], fallback="popularity"),
    ]
    # Just before the hit window, in a folder the window reads: judged, it would be a hit.
    before = log_record("u1", "v1", NOW - timedelta(hours=48, minutes=30), uri=v1, titles=["b"])
    planted.write_records(MODEL, [*v1_hits, before])
    # At the end of the drift window, which is not part of it, filed by its batch under the
    # hour before: counted, it would change Predictions and the top score's bins.
    end = log_record("d9", "v1", NOW, uri=v1, scores=[99.0], inputs=inputs(12, 0.5))
    planted.write_lines(MODEL, NOW - timedelta(hours=1), [json.dumps(end)])
    planted.write_records(
        MODEL,
        [
            log_record(f"e{i}", "v2", DRIFT_AT, uri=v2, scores=[0.5], inputs=inputs(n, p))
            for i, (n, p) in enumerate([(3, 0.5), (7, 2.0), (12, 2.0)])
        ]
        + [
            log_record(
                f"f{i}", "v3", DRIFT_AT, uri=v3, fallback="popularity", inputs=inputs(0, None)
            )
            for i in range(4)
        ]
        + [log_record("f9", "v3", HIT_AT, uri=v3, fallback="popularity", titles=["a"])]
        + [log_record(f"g{i}", "v4", DRIFT_AT, uri=v4, inputs=inputs(6, 0.5)) for i in range(2)]
        + [
            log_record("u6", "v4", OTHER_HIT_AT, uri=v4, titles=["x"]),
            log_record("u7", "v4", OTHER_HIT_AT, uri=v4, titles=["y"]),
        ],
    )
    planted.write_lines(
        MODEL,
        DRIFT_AT,
        ["{not json", json.dumps({**v1_drift[1], "scores": [1.0, 2.0]})],
    )
    planted.write_records(
        SHADOW,
        [
            log_record(f"s{i}", "v2", DRIFT_AT, uri=v2, model=SHADOW, inputs=inputs(7, 0.5))
            for i in range(2)
        ],
    )
    planted.write_records(
        RETIRED, [log_record("r1", "v0", NOW - timedelta(days=30), uri=v1, model=RETIRED)]
    )
    planted.write_events(
        [
            ("u1", "b", "PLAY", HIT_AT + timedelta(hours=1)),
            # At the end of the outcome window, which is not part of it.
            ("u2", "a", "PLAY", HIT_AT + timedelta(hours=24)),
            # The 11th title: beyond k = 10.
            ("u3", "t11", "PLAY", HIT_AT + timedelta(hours=1)),
            # Before the recommendation, and a thumbs-up that is not a play.
            ("u4", "a", "PLAY", HIT_AT - timedelta(hours=1)),
            ("u4", "a", "THUMBS_UP", HIT_AT + timedelta(hours=1)),
            # A play after a fallback, which is not judged.
            ("u5", "a", "PLAY", HIT_AT + timedelta(hours=1)),
            ("u6", "x", "PLAY", OTHER_HIT_AT + timedelta(hours=2)),
        ]
    )
    return planted


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def metrics(self) -> dict[tuple[str, tuple], float]:
        table = {}
        for line in self.stdout.splitlines():
            metric = json.loads(line)
            assert metric["namespace"] == names.NAMESPACE
            assert metric["timestamp"] == NOW.isoformat()
            table[(metric["name"], tuple(metric["dimensions"].items()))] = metric["value"]
        return table


def run_job(spark: Any, argv: list[str]) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        exit_code = monitor.main(argv, spark=spark)
    return Run(exit_code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return plant(tmp_path_factory.mktemp("monitor"))


@pytest.fixture(scope="module")
def dry_run(spark: Any, planted: Planted) -> Run:
    """One dry run over the planted log, shared by the tests that read its figures."""
    return run_job(spark, planted.argv("--dry-run"))


def expected_v1() -> dict[tuple[str, tuple], float]:
    version = dims(MODEL, "v1")
    return {
        (names.PREDICTIONS, version): 10,
        (names.BASELINE_MISSING, version): 0,
        (names.FEATURE_MISSING_SHARE, dims(MODEL, "v1", HISTORY_LENGTH)): 0.0,
        (names.FEATURE_DRIFT, dims(MODEL, "v1", HISTORY_LENGTH)): psi(LENGTH_SHARES, [0, 0, 1]),
        (names.FEATURE_MISSING_SHARE, dims(MODEL, "v1", HISTORY_POPULARITY)): 0.2,
        (names.FEATURE_DRIFT, dims(MODEL, "v1", HISTORY_POPULARITY)): 0.0,
        # -0.5 | 0.0, 0.5 x4 | 1.0, 2.0: the fallbacks' 99.0 is left out.
        (names.PREDICTION_DRIFT, version): psi(TOP_SCORE_SHARES, [1 / 8, 5 / 8, 2 / 8]),
        (names.HIT_RATE_AT_K, version): 0.25,
    }


def test_the_run_succeeds_and_reports_what_it_skipped(dry_run: Run, planted: Planted):
    assert dry_run.exit_code == 0, dry_run.stderr
    assert sorted(dry_run.stderr.splitlines()) == [
        f"model_monitor: warning: {MODEL} v4 has no baseline, so no drift figures: "
        f"{planted.artifact('v4')} holds no baseline.json",
        "model_monitor: warning: skipped a malformed line of model=recommender: 2 scores for 1 "
        "title_ids",
        "model_monitor: warning: skipped a malformed line of model=recommender: not JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    ]


def test_a_drifting_version_gets_its_drift_missing_shares_and_hit_rate(dry_run: Run):
    metrics = dry_run.metrics()

    actual = {key: value for key, value in metrics.items() if key[1][:2] == dims(MODEL, "v1")}
    assert actual == pytest.approx(expected_v1())


def test_a_version_that_matches_its_archived_baseline_barely_drifts(dry_run: Run):
    metrics = dry_run.metrics()

    actual = {key: value for key, value in metrics.items() if key[1][:2] == dims(MODEL, "v2")}
    assert actual == pytest.approx(
        {
            (names.PREDICTIONS, dims(MODEL, "v2")): 3,
            (names.BASELINE_MISSING, dims(MODEL, "v2")): 0,
            (names.FEATURE_MISSING_SHARE, dims(MODEL, "v2", HISTORY_LENGTH)): 0.0,
            (names.FEATURE_DRIFT, dims(MODEL, "v2", HISTORY_LENGTH)): psi(
                LENGTH_SHARES, [1 / 3, 1 / 3, 1 / 3]
            ),
            (names.FEATURE_MISSING_SHARE, dims(MODEL, "v2", HISTORY_POPULARITY)): 0.0,
            (names.FEATURE_DRIFT, dims(MODEL, "v2", HISTORY_POPULARITY)): psi(
                POPULARITY_SHARES, [1 / 3, 2 / 3]
            ),
            (names.PREDICTION_DRIFT, dims(MODEL, "v2")): psi(TOP_SCORE_SHARES, [0, 1, 0]),
        }
    )


def test_a_version_with_only_fallbacks_gets_input_figures_only(dry_run: Run):
    metrics = dry_run.metrics()

    actual = {key: value for key, value in metrics.items() if key[1][:2] == dims(MODEL, "v3")}
    assert actual == pytest.approx(
        {
            (names.PREDICTIONS, dims(MODEL, "v3")): 4,
            (names.BASELINE_MISSING, dims(MODEL, "v3")): 0,
            (names.FEATURE_MISSING_SHARE, dims(MODEL, "v3", HISTORY_LENGTH)): 0.0,
            (names.FEATURE_DRIFT, dims(MODEL, "v3", HISTORY_LENGTH)): psi(LENGTH_SHARES, [1, 0, 0]),
            (names.FEATURE_MISSING_SHARE, dims(MODEL, "v3", HISTORY_POPULARITY)): 1.0,
        }
    )


def test_a_version_without_a_baseline_is_reported_and_keeps_its_hit_rate(dry_run: Run):
    metrics = dry_run.metrics()

    actual = {key: value for key, value in metrics.items() if key[1][:2] == dims(MODEL, "v4")}
    assert actual == {
        (names.PREDICTIONS, dims(MODEL, "v4")): 2,
        (names.BASELINE_MISSING, dims(MODEL, "v4")): 1,
        (names.HIT_RATE_AT_K, dims(MODEL, "v4")): 0.5,
    }


def test_the_model_series_adds_counts_and_shows_the_busiest_version(dry_run: Run):
    metrics = dry_run.metrics()

    actual = {
        key: value
        for key, value in metrics.items()
        if key[1][0] == ("Model", MODEL) and is_model_series(key)
    }
    version_one = {
        (name, tuple(pair for pair in dimensions if pair[0] != "ModelVersion")): value
        for (name, dimensions), value in expected_v1().items()
        if name not in (names.PREDICTIONS, names.BASELINE_MISSING)
    }
    assert actual == pytest.approx(
        {
            (names.PREDICTIONS, dims(MODEL)): 19,
            (names.BASELINE_MISSING, dims(MODEL)): 1,
            (names.MALFORMED_RECORDS, dims(MODEL)): 2,
            **version_one,
        }
    )


def test_shadow_scoring_is_a_model_of_its_own(dry_run: Run):
    metrics = dry_run.metrics()

    shadow = {key for key in metrics if key[1][0] == ("Model", SHADOW)}
    assert metrics[(names.PREDICTIONS, dims(SHADOW, "v2"))] == 2
    assert metrics[(names.PREDICTIONS, dims(SHADOW))] == 2
    assert (names.HIT_RATE_AT_K, dims(SHADOW)) not in shadow
    assert {name for name, _ in shadow} == {
        names.PREDICTIONS,
        names.BASELINE_MISSING,
        names.MALFORMED_RECORDS,
        names.FEATURE_DRIFT,
        names.FEATURE_MISSING_SHARE,
        names.PREDICTION_DRIFT,
    }


def test_a_model_folder_without_records_in_the_window_reports_zeros(dry_run: Run):
    metrics = dry_run.metrics()

    assert {key: value for key, value in metrics.items() if key[1][0] == ("Model", RETIRED)} == {
        (names.PREDICTIONS, dims(RETIRED)): 0,
        (names.BASELINE_MISSING, dims(RETIRED)): 0,
        (names.MALFORMED_RECORDS, dims(RETIRED)): 0,
    }


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


def test_an_empty_window_publishes_zero_counts_per_model(spark: Any, planted: Planted, aws: None):
    later = NOW + timedelta(days=5)
    argv = planted.argv("--now", later.isoformat(), "--namespace", "Test/Monitoring")

    run = run_job(spark, argv)

    assert (run.exit_code, run.stderr) == (0, "")
    assert json.loads(run.stdout) == {
        "drift_window": [(later - timedelta(hours=24)).isoformat(), later.isoformat()],
        "hit_window": [
            (later - timedelta(hours=48)).isoformat(),
            (later - timedelta(hours=24)).isoformat(),
        ],
        "models": 3,
        "versions": 0,
        "predictions": 0,
        "judged": 0,
        "malformed_records": 0,
        "metrics": 9,
        "put_metric_data_calls": 1,
    }
    client = cloudwatch_client(REGION)
    published = client.list_metrics(Namespace="Test/Monitoring")["Metrics"]
    assert sorted((m["MetricName"], m["Dimensions"][0]["Value"]) for m in published) == sorted(
        (name, model)
        for name in (names.PREDICTIONS, names.BASELINE_MISSING, names.MALFORMED_RECORDS)
        for model in (MODEL, SHADOW, RETIRED)
    )


def test_a_missing_prediction_log_is_an_input_error(spark: Any, planted: Planted, capsys):
    argv = planted.argv("--dry-run")
    argv[argv.index(str(planted.log))] = str(planted.root / "nowhere")

    assert monitor.main(argv, spark=spark) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"model_monitor: error: prediction log not found: {planted.root / 'nowhere'}\n",
    )


def test_a_missing_interactions_table_is_an_input_error(spark: Any, planted: Planted, capsys):
    argv = planted.argv("--dry-run")
    argv[argv.index(str(planted.interactions))] = str(planted.root / "nowhere")

    assert monitor.main(argv, spark=spark) == 2
    assert capsys.readouterr().err == (
        f"model_monitor: error: interactions table not found: {planted.root / 'nowhere'}\n"
    )
