"""Tests for jobs.batch.experiment_analysis: its parts on hand-made values, then two runs on a
real local Spark session over a planted prediction log and curated table with a planted
effect, with ABlaze's tables in moto: a dry run, and a run whose items ABlaze analyses."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import statistics
import subprocess
import sys
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

from ablaze.experiments import (
    Experiment,
    ExperimentSpec,
    create_experiment,
    started,
    stopped,
)
from ablaze.store import ExperimentStore, ResultStore
from jobs.batch import experiment_analysis as analysis
from jobs.experiments.documents import ExperimentPlan, Window
from jobs.experiments.observations import CellObservations, MetricSample
from jobs.experiments.tables import dynamodb_client

# PySpark 3.5 leaves the sockets it reads collect() results from to the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")

REPO_ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
EXPERIMENTS, RESULTS = "ablaze-experiments", "ablaze-results"
START = datetime(2030, 1, 1, tzinfo=UTC)
NOW = START + timedelta(days=3)
MODEL = "recommender"
METRIC_NAMES = ("play_rate", "completion_rate", "plays_per_member")


def args(*extra: str) -> list[str]:
    return [
        "--predictions", "/log", "--interactions", "/table", "--experiments-table", EXPERIMENTS,
        "--results-table", RESULTS, "--region", REGION, *extra,
    ]  # fmt: skip


# --- arguments and the plain parts ----------------------------------------------------------


def test_arguments_are_parsed_with_now_in_utc():
    parsed = analysis.parse_args(args("--now", "2030-01-04T01:00:00+01:00", "--dry-run"))

    assert (parsed.experiments_table, parsed.results_table, parsed.now) == (
        EXPERIMENTS,
        RESULTS,
        NOW,
    )
    assert parsed.dry_run


def test_now_defaults_to_the_current_time():
    before = datetime.now(UTC)

    assert before <= analysis.parse_args(args()).now <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--now", "later"], "argument --now: not an ISO 8601 time: 'later'"),
        (["--results-table", " "], "--results-table must not be empty"),
        (["--experiments-table", ""], "--experiments-table must not be empty"),
    ],
)
def test_rejects_bad_arguments_in_one_line(extra: list[str], message: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        analysis.parse_args(args(*extra))

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"experiment_analysis: error: {message}"


def test_modules_import_without_pyspark_boto3_or_ablaze():
    # Mapping a module to None in sys.modules makes importing it fail, as if uninstalled: EMR
    # nodes have no ablaze, and the job imports PySpark and boto3 where it uses them.
    script = (
        "import sys\n"
        "for name in ('pyspark', 'boto3', 'botocore', 'ablaze'):\n"
        "    sys.modules[name] = None\n"
        "import jobs.batch.experiment_analysis\n"
        "from jobs.experiments import documents, exposures, observations, tables\n"
        "print(observations.FORMAT)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "1\n", "")


def plan(experiment_id: str, *, state: str = "running", **changes: Any) -> ExperimentPlan:
    fields = {
        "id": experiment_id,
        "state": state,
        "cells": ("control", "treatment"),
        "metrics": ("play_rate",),
        "start": START,
        "end": START + timedelta(days=14),
        "stopped_at": None,
    }
    return ExperimentPlan(**{**fields, **changes})


def test_only_experiments_with_a_window_are_analysed():
    plans = [plan("draft", state="draft"), plan("running"), plan("later", start=NOW)]

    assert analysis.to_analyse(plans, now=NOW) == [
        analysis.Analysis(plan=plans[1], window=Window(start=START, end=NOW))
    ]


def test_the_log_is_read_from_the_day_before_each_window():
    windows = [
        Window(start=START, end=START + timedelta(days=1, hours=1)),
        Window(start=START + timedelta(days=5), end=START + timedelta(days=5, hours=1)),
    ]

    assert analysis.log_date_folders(windows) == [
        "date=2029-12-31",
        "date=2030-01-01",
        "date=2030-01-02",
        "date=2030-01-05",
        "date=2030-01-06",
    ]


def test_a_malformed_line_gives_its_reason():
    scopes = {}

    assert analysis.exposure_or_reason("[]", scopes=scopes) == "not a JSON object but list"
    assert analysis.exposure_or_reason('{"experiment": null}', scopes=scopes) is None


def test_an_exposure_row_carries_the_end_of_its_window():
    exposure = (("ranker", "m1"), (5, "treatment", True))

    row = analysis.exposure_row(exposure, end_ms={"ranker": 9})

    assert row == ("ranker", "m1", "treatment", 5, 9, True)


def statistics_row(experiment: str, cell: str, members: int, conflicts: int) -> dict[str, Any]:
    return {
        "experiment_id": experiment,
        "cell": cell,
        "members": members,
        "conflicts": conflicts,
        **{metric: {"mean": 0.5, "variance": None} for metric in METRIC_NAMES},
    }


def test_cell_rows_become_each_experiments_measurements():
    rows = [
        statistics_row("ranker", "control", 1, 1),
        statistics_row("ranker", "treatment", 3, 2),
        statistics_row("other", "a", 2, 0),
    ]

    measured = analysis.measured_experiments(rows)

    assert measured["ranker"].cell_conflicts == 3
    assert measured["ranker"].cells["control"] == CellObservations(
        members=1,
        metrics={metric: MetricSample(n=1, mean=0.5, variance=0.0) for metric in METRIC_NAMES},
    )
    assert set(measured) == {"ranker", "other"}


def test_an_experiment_nobody_was_exposed_in_still_gets_its_item():
    analysed = analysis.Analysis(plan=plan("quiet"), window=Window(start=START, end=NOW))

    [item] = analysis.result_items([analysed], {}, computed_at=NOW)

    assert item["computed_at"] == {"S": "2030-01-04T00:00:00.000000Z"}
    observations = json.loads(item["observations"]["S"])
    assert observations["cell_conflicts"] == 0
    assert {cell["members"] for cell in observations["cells"].values()} == {0}


def test_the_metric_columns_are_the_catalogue(spark: Any):
    assert tuple(analysis.metric_columns()) == METRIC_NAMES


# --- the job on Spark ---------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A member the planted data exposes, with the outcomes that should count."""

    member_id: str
    cell: str
    plays: int
    completes: int


def millis(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_record(
    member: str, at: datetime, *, experiment: str | None, cell: str | None, model: str = MODEL
) -> dict[str, Any]:
    return {
        "member_id": member,
        "model_name": model,
        "model_version": "7",
        "model_artifact_uri": "s3://models/7/model.tar.gz",
        "generated_at": millis(at),
        "title_ids": ["t1"],
        "scores": [0.5],
        "fallback": None,
        "experiment": experiment,
        "cell": cell,
        "inputs": None,
    }


@dataclass
class Planted:
    """The planted log, table and experiments, and what the run should find."""

    root: Path
    ranker: list[Member]
    fresh_stop: list[Member]

    @property
    def log(self) -> Path:
        return self.root / "raw" / "predictions"

    @property
    def interactions(self) -> Path:
        return self.root / "curated" / "member_interactions"

    def write_lines(self, model: str, hour: datetime, lines: list[str]) -> None:
        folder = self.log / f"model={model}" / f"date={hour:%Y-%m-%d}/hour={hour:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        with gzip.open(folder / f"{uuid.uuid4().hex}.jsonl.gz", "wt", encoding="utf-8") as file:
            file.writelines(f"{line}\n" for line in lines)

    def write_records(self, records: list[dict[str, Any]]) -> None:
        """Files each record under its model and the hour of its generated_at."""
        by_folder: dict[tuple[str, datetime], list[str]] = {}
        for record in records:
            at = datetime.fromisoformat(record["generated_at"])
            hour = at.replace(minute=0, second=0, microsecond=0)
            by_folder.setdefault((record["model_name"], hour), []).append(json.dumps(record))
        for (model, hour), lines in by_folder.items():
            self.write_lines(model, hour, lines)

    def write_events(self, events: list[tuple[str, str, datetime]]) -> None:
        """Writes (member, event type, time) rows as the ETL's curated partitions."""
        by_date: dict[str, list[tuple[str, str, datetime]]] = {}
        for event in events:
            by_date.setdefault(event[2].date().isoformat(), []).append(event)
        for day, rows in by_date.items():
            folder = self.interactions / f"event_date={day}"
            folder.mkdir(parents=True)
            table = pa.table(
                {
                    "event_id": [f"e{day}-{index}" for index in range(len(rows))],
                    "member_id": [row[0] for row in rows],
                    "title_id": ["t1"] * len(rows),
                    "event_type": [row[1] for row in rows],
                    "event_time": pa.array([row[2] for row in rows], pa.timestamp("us", "UTC")),
                    "watch_seconds": pa.array([None] * len(rows), pa.int32()),
                    "device_type": ["tv"] * len(rows),
                    "country": ["DE"] * len(rows),
                }
            )
            pq.write_table(table, folder / "part-00000.parquet")

    def argv(self, *extra: str) -> list[str]:
        return [
            "--predictions", str(self.log), "--interactions", str(self.interactions),
            "--experiments-table", EXPERIMENTS, "--results-table", RESULTS,
            "--region", REGION, "--now", NOW.isoformat(), *extra,
        ]  # fmt: skip


def outcome_events(member: str, exposed_at: datetime, *, plays: int, completes: int) -> list:
    after = exposed_at + timedelta(hours=1)
    return [(member, "PLAY", after)] * plays + [(member, "COMPLETE", after)] * completes


def plant_ranker(planted: Planted, records: list, events: list) -> None:
    """``ranker``: 120 members a cell; the treatment lifts plays from 20 % to 50 % of members.

    Besides, ``both`` is seen in treatment and then control (a conflict, counted in
    treatment); ``late`` has a record before the window and is exposed a day in, so the play
    between the two does not count; a thumbs-up is no outcome; a line names cell ``bold``.
    """
    for index in range(120):
        exposed_at = START + timedelta(minutes=17 * index)
        for cell, plays in (
            ("control", 2 if index % 10 == 0 else int(index % 5 == 0)),
            ("treatment", 3 if index % 4 == 0 else int(index % 2 == 0)),
        ):
            member = Member(f"{cell[0]}{index:03d}", cell, plays, int(plays > 0 and index % 3 == 0))
            planted.ranker.append(member)
            records.append(log_record(member.member_id, exposed_at, experiment="ranker", cell=cell))
            # A second request, later the same day: still the same exposure.
            later = exposed_at + timedelta(hours=2)
            records.append(log_record(member.member_id, later, experiment="ranker", cell=cell))
            events += outcome_events(
                member.member_id, exposed_at, plays=member.plays, completes=member.completes
            )
    first, second = START + timedelta(hours=30), START + timedelta(hours=40)
    records.append(log_record("both", first, experiment="ranker", cell="treatment"))
    records.append(log_record("both", second, experiment="ranker", cell="control"))
    events += outcome_events("both", second, plays=1, completes=0)
    planted.ranker.append(Member("both", "treatment", 1, 0))
    records.append(
        log_record("late", START - timedelta(minutes=30), experiment="ranker", cell="control")
    )
    exposed_at = START + timedelta(days=1)
    records.append(log_record("late", exposed_at, experiment="ranker", cell="control"))
    events += [("late", "PLAY", START + timedelta(hours=2)), ("late", "THUMBS_UP", NOW)]
    planted.ranker.append(Member("late", "control", 0, 0))
    records.append(log_record("odd", START + timedelta(hours=3), experiment="ranker", cell="bold"))


def plant_fresh_stop(planted: Planted, records: list, events: list) -> None:
    """``fresh-stop``: stopped a day in; cell ``b`` saw nobody before the stop. ``f2``'s
    completion and ``f3``'s first request come after the stop."""
    stop = START + timedelta(days=1)
    records += [
        log_record("f1", START + timedelta(hours=2), experiment="fresh-stop", cell="a"),
        log_record("f2", START + timedelta(hours=5), experiment="fresh-stop", cell="a"),
        log_record("f3", stop + timedelta(hours=1), experiment="fresh-stop", cell="b"),
    ]
    events += [
        ("f1", "COMPLETE", START + timedelta(hours=3)),
        ("f2", "COMPLETE", stop + timedelta(minutes=1)),
        ("f3", "COMPLETE", stop + timedelta(hours=2)),
    ]
    planted.fresh_stop += [Member("f1", "a", 0, 1), Member("f2", "a", 0, 0)]


def plant(root: Path) -> Planted:
    """The log and the table; besides the two experiments, records of an experiment stopped
    too long ago, shadow records outside any experiment, and two malformed lines (one in a
    folder no window reaches, which is never read)."""
    planted = Planted(root, ranker=[], fresh_stop=[])
    records: list[dict[str, Any]] = []
    events: list[tuple[str, str, datetime]] = []
    plant_ranker(planted, records, events)
    plant_fresh_stop(planted, records, events)
    records.append(log_record("o1", START, experiment="old-test", cell="control"))
    records.append(log_record("s1", START, experiment=None, cell=None, model=f"{MODEL}-shadow"))
    planted.write_records(records)
    planted.write_lines(MODEL, START + timedelta(hours=1), ["{not json"])
    planted.write_lines(MODEL, START - timedelta(days=10), ["{never read"])
    planted.write_events(events)
    return planted


def ablaze_draft(experiment_id: str, **changes: Any) -> Experiment:
    """An experiment as ABlaze creates it, a day before its start."""
    spec = {
        "id": experiment_id,
        "surface": experiment_id,
        "cells": [
            {"name": "control", "percent": 10, "model_version": "7", "control": True},
            {"name": "treatment", "percent": 10, "model_version": "8"},
        ],
        "start": START.isoformat(),
        "end": (START + timedelta(days=14)).isoformat(),
        "primary_metric": "play_rate",
        "guardrail_metrics": ["completion_rate", "plays_per_member"],
        **changes,
    }
    before = datetime.fromisoformat(spec["start"]) - timedelta(days=1)
    return create_experiment(ExperimentSpec.model_validate(spec), now=before)


def ablaze_running(experiment_id: str, **changes: Any) -> Experiment:
    draft = ablaze_draft(experiment_id, **changes)
    return started(draft, now=draft.created_at)


def write_experiments(client: Any) -> dict[str, Experiment]:
    """ABlaze's experiments table, as ABlaze writes it: two experiments to analyse, one
    stopped too long ago, a draft, a surface claim and an unreadable document."""
    for table, keys in (
        (EXPERIMENTS, ["experiment_id"]),
        (RESULTS, ["experiment_id", "computed_at"]),
    ):
        client.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[
                {"AttributeName": key, "KeyType": kind}
                for key, kind in zip(keys, ("HASH", "RANGE"), strict=False)
            ],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"} for key in keys],
        )  # fmt: skip
    fresh_cells = [
        {"name": "a", "percent": 10, "model_version": "7", "control": True},
        {"name": "b", "percent": 10, "model_version": "8"},
    ]
    experiments = {
        "ranker": ablaze_running("ranker"),
        "fresh-stop": stopped(
            ablaze_running(
                "fresh-stop",
                cells=fresh_cells,
                primary_metric="completion_rate",
                guardrail_metrics=[],
            ),
            now=START + timedelta(days=1),
        ),
        "old-test": stopped(
            ablaze_running(
                "old-test",
                start=(START - timedelta(days=20)).isoformat(),
                end=(START - timedelta(days=6)).isoformat(),
            ),
            now=NOW - timedelta(days=10),
        ),
        "draft-test": ablaze_draft("draft-test"),
    }
    store = ExperimentStore(client=client, table_name=EXPERIMENTS)
    for experiment in experiments.values():
        store.create(experiment)
    client.put_item(
        TableName=EXPERIMENTS,
        Item={"experiment_id": {"S": "surface#ranker"}, "claimed_by": {"S": "ranker"}},
    )
    client.put_item(
        TableName=EXPERIMENTS,
        Item={"experiment_id": {"S": "broken"}, "document": {"S": "{"}},
    )
    return experiments


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    """moto for the module: ABlaze's two tables, shared by the two runs."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        with mock_aws():
            yield dynamodb_client(REGION)


@pytest.fixture(scope="module")
def experiments(aws: Any) -> dict[str, Experiment]:
    return write_experiments(aws)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return plant(tmp_path_factory.mktemp("experiments"))


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str


def run_job(spark: Any, argv: list[str]) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        exit_code = analysis.main(argv, spark=spark)
    return Run(exit_code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def dry_run(spark: Any, planted: Planted, experiments: dict[str, Experiment]) -> Run:
    """One dry run over the planted data, shared by the tests that read its items."""
    return run_job(spark, planted.argv("--dry-run"))


def items_of(run: Run) -> dict[str, dict[str, Any]]:
    items = [json.loads(line) for line in run.stdout.splitlines()]
    return {item["experiment_id"]["S"]: item for item in items}


def observations_of(run: Run, experiment: str) -> dict[str, Any]:
    return json.loads(items_of(run)[experiment]["observations"]["S"])


def flat(cell: dict[str, Any]) -> dict[str, float]:
    """A cell's figures by (metric, field), which pytest.approx can compare."""
    figures = {("members", ""): cell["members"]}
    for metric, sample in cell["metrics"].items():
        figures.update({(metric, field): value for field, value in sample.items()})
    return figures


def expected_cell(members: list[Member], metrics: tuple[str, ...]) -> dict[str, Any]:
    values = {
        "play_rate": [float(member.plays > 0) for member in members],
        "completion_rate": [float(member.completes > 0) for member in members],
        "plays_per_member": [float(member.plays) for member in members],
    }
    return {
        "members": len(members),
        "metrics": {
            metric: {
                "n": len(members),
                "mean": statistics.fmean(values[metric]) if members else 0.0,
                "variance": statistics.variance(values[metric]) if len(members) > 1 else 0.0,
            }
            for metric in metrics
        },
    }


def test_the_run_reports_what_it_skipped(dry_run: Run):
    assert dry_run.exit_code == 0, dry_run.stderr
    assert sorted(dry_run.stderr.splitlines()) == [
        "experiment_analysis: warning: skipped a malformed line of the prediction log: cell "
        "'bold' is not a cell of experiment 'ranker'",
        "experiment_analysis: warning: skipped a malformed line of the prediction log: not "
        "JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        "experiment_analysis: warning: skipped experiment item 'broken': not JSON: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)",
    ]


def test_only_experiments_under_analysis_get_an_item(dry_run: Run):
    items = items_of(dry_run)

    assert sorted(items) == ["fresh-stop", "ranker"]
    assert {item["computed_at"]["S"] for item in items.values()} == {"2030-01-04T00:00:00.000000Z"}


def test_each_cell_holds_the_samples_of_its_first_exposed_members(dry_run: Run, planted: Planted):
    observations = observations_of(dry_run, "ranker")

    assert observations["format"] == 1
    assert observations["window"] == ["2030-01-01T00:00:00.000000Z", "2030-01-04T00:00:00.000000Z"]
    assert observations["cell_conflicts"] == 1
    for cell in ("control", "treatment"):
        members = [member for member in planted.ranker if member.cell == cell]
        actual = flat(observations["cells"][cell])
        assert actual == pytest.approx(flat(expected_cell(members, METRIC_NAMES))), cell


def test_a_stopped_experiment_is_measured_until_its_stop(dry_run: Run, planted: Planted):
    observations = observations_of(dry_run, "fresh-stop")

    assert observations["window"] == ["2030-01-01T00:00:00.000000Z", "2030-01-02T00:00:00.000000Z"]
    assert sorted(observations["cells"]) == ["a", "b"]
    assert flat(observations["cells"]["a"]) == pytest.approx(
        flat(expected_cell(planted.fresh_stop, ("completion_rate",)))
    )
    assert observations["cells"]["b"] == expected_cell([], ("completion_rate",))


def test_ablaze_finds_the_planted_effect_in_the_written_results(
    spark: Any, planted: Planted, experiments: dict[str, Experiment], aws: Any
):
    run = run_job(spark, planted.argv())

    assert run.exit_code == 0, run.stderr
    assert json.loads(run.stdout) == {
        "now": NOW.isoformat(),
        "experiments": 2,
        "exposed_members": 244,
        "cell_conflicts": 1,
        "malformed_records": 2,
        "items": 2,
        "skipped_documents": 1,
    }
    result = ResultStore(client=aws, table_name=RESULTS).latest(experiments["ranker"])
    assert result.srm.counts == {"control": 121, "treatment": 121}
    assert result.cell_conflicts == 1
    play_rate = result.metrics[0]
    assert play_rate.metric == "play_rate"
    [comparison] = play_rate.comparisons
    assert comparison.effect == pytest.approx(61 / 121 - 24 / 121)
    assert comparison.fixed.low > 0
    # Anytime-valid intervals are far wider with so few members; their tests are ABlaze's.
    assert comparison.sequential.low < comparison.fixed.low
    assert comparison.trustworthy


def test_missing_inputs_are_errors(
    spark: Any, planted: Planted, experiments: dict[str, Experiment], capsys
):
    nowhere = str(planted.root / "nowhere")
    argv = planted.argv("--dry-run")
    argv[argv.index(str(planted.interactions))] = nowhere

    assert analysis.main(argv, spark=spark) == 2
    assert capsys.readouterr().err.endswith(
        f"experiment_analysis: error: interactions table not found: {nowhere}\n"
    )
    argv = planted.argv("--dry-run", "--predictions", nowhere)
    assert analysis.main(argv, spark=spark) == 2
    assert capsys.readouterr().err.endswith(
        f"experiment_analysis: error: prediction log not found: {nowhere}\n"
    )
    argv = planted.argv("--dry-run", "--experiments-table", "missing")
    assert analysis.main(argv, spark=spark) == 2
    assert capsys.readouterr().err == "experiment_analysis: error: table not found: missing\n"


def test_with_nothing_to_analyse_nothing_is_written(
    spark: Any, planted: Planted, experiments: dict[str, Experiment], aws: Any
):
    stored_before = aws.scan(TableName=RESULTS)["Count"]
    later = NOW + timedelta(days=365)

    run = run_job(spark, planted.argv("--now", later.isoformat()))

    assert (run.exit_code, json.loads(run.stdout)["experiments"]) == (0, 0)
    assert aws.scan(TableName=RESULTS)["Count"] == stored_before
