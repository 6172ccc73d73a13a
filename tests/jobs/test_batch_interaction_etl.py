"""Tests for jobs.batch.interaction_etl on a real local Spark session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from jobs.batch import interaction_etl as etl

# PySpark 3.5 leaves the sockets it reads collect() results from to the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")

RUN_DATE = date(2024, 5, 10)
PREVIOUS_DATE = date(2024, 5, 9)


def at(day: date, hour: int, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=UTC)


def event_line(
    event_id: str,
    member_id: str | None,
    title_id: str,
    event_type: str,
    when: datetime,
    watch_seconds: int | None,
    device_type: str,
    country: str = "US",
) -> str:
    event = {
        "event_id": event_id,
        "member_id": member_id,
        "title_id": title_id,
        "event_type": event_type,
        "event_time": int(when.timestamp() * 1000),
        "watch_seconds": watch_seconds,
        "device_type": device_type,
        "country": country,
    }
    return json.dumps({k: v for k, v in event.items() if v is not None or k == "watch_seconds"})


def write_raw(raw_root: Path, day: date, hour: int, lines: list[str]) -> None:
    folder = raw_root / f"event_date={day.isoformat()}" / f"event_hour={hour:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-0").write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Layout:
    """Paths and catalog names of one isolated ETL environment."""

    root: Path
    curated_db: str
    features_db: str

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def curated(self) -> Path:
        return self.root / "curated" / "member_interactions"

    @property
    def features(self) -> Path:
        return self.root / "features" / "member_features"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine" / "member_interactions"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def curated_table(self) -> str:
        return f"{self.curated_db}.member_interactions"

    @property
    def features_table(self) -> str:
        return f"{self.features_db}.member_features"

    def argv(self, run_date: date) -> list[str]:
        return [
            "--raw-path",
            str(self.raw),
            "--run-date",
            run_date.isoformat(),
            "--curated-path",
            str(self.curated),
            "--features-path",
            str(self.features),
            "--quarantine-path",
            str(self.quarantine),
            "--curated-database",
            self.curated_db,
            "--features-database",
            self.features_db,
            "--metrics-path",
            str(self.metrics),
        ]


def new_layout(spark, root: Path, name: str) -> Layout:
    layout = Layout(root, f"curated_{name}", f"features_{name}")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {layout.curated_db}")
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {layout.features_db}")
    return layout


def run_etl(spark, layout: Layout, run_date: date) -> dict:
    assert etl.main(layout.argv(run_date), spark=spark) == 0
    return json.loads(layout.metrics.read_text(encoding="utf-8"))


def quarantine_records(layout: Layout, run_date: date) -> list[dict]:
    folder = layout.quarantine / f"run_date={run_date.isoformat()}"
    return [
        json.loads(line)
        for part in sorted(folder.glob("part-*.json"))
        for line in part.read_text(encoding="utf-8").splitlines()
    ]


def snapshot(spark, layout: Layout) -> dict:
    return {
        "curated": sorted(map(tuple, spark.table(layout.curated_table).collect())),
        "features": sorted(map(tuple, spark.table(layout.features_table).collect())),
        "quarantine": sorted(
            json.dumps(r, sort_keys=True) for r in quarantine_records(layout, RUN_DATE)
        ),
    }


PREVIOUS_DAY_LINES = [
    event_line("p-1", "m1", "t1", "PLAY", at(PREVIOUS_DATE, 20), 1200, "tv"),
    event_line("p-2", "m1", "t1", "COMPLETE", at(PREVIOUS_DATE, 20, 40), 2400, "tv"),
    event_line("p-3", "m2", "t3", "PLAY", at(PREVIOUS_DATE, 10), 100, "mobile"),
    event_line("p-4", "m2", "t3", "PLAY", at(PREVIOUS_DATE, 11), -30, "mobile"),
]
RUN_DAY_MIDNIGHT_LINES = [
    event_line("e-1", "m1", "t2", "PLAY", at(RUN_DATE, 0), 300, "mobile"),
    event_line("e-2", "m1", "t9", "IMPRESSION", at(RUN_DATE, 0, 10), None, "web"),
]
RUN_DAY_AFTERNOON_LINES = [
    event_line("e-3", "m1", "t2", "PLAY", at(RUN_DATE, 13), 600, "mobile"),
    event_line("e-4", "m1", "t2", "THUMBS_UP", at(RUN_DATE, 13, 30), None, "mobile"),
    # A replay of e-3 stamped later, and an exact copy of e-4.
    event_line("e-3", "m1", "t2", "PLAY", at(RUN_DATE, 13, 5), 600, "mobile"),
    event_line("e-4", "m1", "t2", "THUMBS_UP", at(RUN_DATE, 13, 30), None, "mobile"),
    event_line("e-5", "m2", "t4", "ADD_TO_LIST", at(RUN_DATE, 13), None, "tv"),
    event_line("e-6", "m2", "t4", "PAUSE", at(RUN_DATE, 13, 1), None, "tv"),
    event_line("e-7", None, "t4", "PLAY", at(RUN_DATE, 13, 2), 60, "tv"),
    '{"event_id": "e-8", "member_id": "m3", broken',
    event_line("e-9", "m3", "t5", "PLAY", at(PREVIOUS_DATE, 23, 59, 59, 999000), 10, "web"),
    event_line("e-10", "m3", "t5", "PLAY", at(RUN_DATE, 14), -5, "web"),
    '{"event_id": "e-11", "member_id": "m3", "event_time": "yesterday"}',
]
EXPECTED_RUN_DAY_METRICS = {
    "run_date": "2024-05-10",
    "rows_read": 13,
    "rows_valid": 5,
    "rows_quarantined": 8,
    "quarantined_by_reason": {
        "duplicate_event_id": 2,
        "event_date_mismatch": 1,
        "malformed_record": 2,
        "missing_member_id": 1,
        "negative_watch_seconds": 1,
        "unknown_event_type": 1,
    },
    "curated_rows": 5,
    "feature_rows": 2,
}


@dataclass(frozen=True)
class PipelineRun:
    layout: Layout
    previous_metrics: dict
    first_metrics: dict
    rerun_metrics: dict
    first_snapshot: dict


@pytest.fixture(scope="module")
def pipeline(spark, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """Two consecutive days processed, then the second day processed again."""
    layout = new_layout(spark, tmp_path_factory.mktemp("etl"), "pipeline")
    write_raw(layout.raw, PREVIOUS_DATE, 20, PREVIOUS_DAY_LINES)
    write_raw(layout.raw, RUN_DATE, 0, RUN_DAY_MIDNIGHT_LINES)
    write_raw(layout.raw, RUN_DATE, 13, RUN_DAY_AFTERNOON_LINES)
    previous_metrics = run_etl(spark, layout, PREVIOUS_DATE)
    first_metrics = run_etl(spark, layout, RUN_DATE)
    first_snapshot = snapshot(spark, layout)
    rerun_metrics = run_etl(spark, layout, RUN_DATE)
    return PipelineRun(layout, previous_metrics, first_metrics, rerun_metrics, first_snapshot)


def test_run_counts_every_row(pipeline: PipelineRun) -> None:
    assert pipeline.first_metrics == EXPECTED_RUN_DAY_METRICS
    assert pipeline.previous_metrics == {
        "run_date": "2024-05-09",
        "rows_read": 4,
        "rows_valid": 3,
        "rows_quarantined": 1,
        "quarantined_by_reason": {"negative_watch_seconds": 1},
        "curated_rows": 3,
        "feature_rows": 2,
    }


def test_rerun_of_a_date_is_idempotent(spark, pipeline: PipelineRun) -> None:
    assert pipeline.rerun_metrics == EXPECTED_RUN_DAY_METRICS
    assert snapshot(spark, pipeline.layout) == pipeline.first_snapshot
    assert spark.table(pipeline.layout.curated_table).count() == 8


def test_tables_are_registered_external_and_partitioned(spark, pipeline: PipelineRun) -> None:
    layout = pipeline.layout
    assert spark.catalog.tableExists(layout.curated_table)
    assert spark.catalog.tableExists(layout.features_table)
    for table, column, location in (
        (layout.curated_table, "event_date", layout.curated),
        (layout.features_table, "feature_date", layout.features),
    ):
        assert [c.name for c in spark.catalog.listColumns(table) if c.isPartition] == [column]
        details = {
            row.col_name: row.data_type
            for row in spark.sql(f"DESCRIBE TABLE EXTENDED {table}").collect()
        }
        assert details["Type"] == "EXTERNAL"
        assert details["Provider"] == "parquet"
        assert Path(details["Location"].removeprefix("file:")) == location
    partitions = [
        r.partition for r in spark.sql(f"SHOW PARTITIONS {layout.curated_table}").collect()
    ]
    assert partitions == ["event_date=2024-05-09", "event_date=2024-05-10"]


def test_curated_partitions_on_disk(pipeline: PipelineRun) -> None:
    curated = pipeline.layout.curated
    folders = sorted(p.name for p in curated.iterdir() if p.is_dir())
    assert folders == ["event_date=2024-05-09", "event_date=2024-05-10"]
    for folder in folders:
        assert list((curated / folder).glob("*.parquet"))
    feature_folders = sorted(p.name for p in pipeline.layout.features.iterdir() if p.is_dir())
    assert feature_folders == ["feature_date=2024-05-09", "feature_date=2024-05-10"]


def test_curated_schema_and_rows(spark, pipeline: PipelineRun) -> None:
    table = spark.table(pipeline.layout.curated_table)
    assert [(f.name, f.dataType.simpleString()) for f in table.schema.fields] == [
        ("event_id", "string"),
        ("member_id", "string"),
        ("title_id", "string"),
        ("event_type", "string"),
        ("event_time", "timestamp"),
        ("watch_seconds", "int"),
        ("device_type", "string"),
        ("country", "string"),
        ("event_date", "date"),
    ]
    rows = table.where(f"event_date = DATE '{RUN_DATE}'").orderBy("event_id").collect()
    assert [(r.event_id, r.event_type, r.watch_seconds) for r in rows] == [
        ("e-1", "PLAY", 300),
        ("e-2", "IMPRESSION", None),
        ("e-3", "PLAY", 600),
        ("e-4", "THUMBS_UP", None),
        ("e-5", "ADD_TO_LIST", None),
    ]
    kept_replay = next(r for r in rows if r.event_id == "e-3")
    assert kept_replay.event_time == datetime(2024, 5, 10, 13, 0)
    assert rows[0].event_time == datetime(2024, 5, 10, 0, 0)


def test_quarantine_holds_each_bad_row_with_its_reason(pipeline: PipelineRun) -> None:
    records = quarantine_records(pipeline.layout, RUN_DATE)
    reasons = sorted((r.get("event_id", ""), r["quarantine_reason"]) for r in records)
    assert reasons == [
        ("", "malformed_record"),
        ("e-10", "negative_watch_seconds"),
        ("e-11", "malformed_record"),
        ("e-3", "duplicate_event_id"),
        ("e-4", "duplicate_event_id"),
        ("e-6", "unknown_event_type"),
        ("e-7", "missing_member_id"),
        ("e-9", "event_date_mismatch"),
    ]
    broken = next(r for r in records if "event_id" not in r)
    assert broken["raw_record"] == '{"event_id": "e-8", "member_id": "m3", broken'
    replay = next(r for r in records if r.get("event_id") == "e-3")
    assert replay["event_time"] == int(at(RUN_DATE, 13, 5).timestamp() * 1000)
    previous = quarantine_records(pipeline.layout, PREVIOUS_DATE)
    assert [(r["event_id"], r["quarantine_reason"]) for r in previous] == [
        ("p-4", "negative_watch_seconds")
    ]


def test_features_for_hand_computed_members(spark, pipeline: PipelineRun) -> None:
    features = spark.table(pipeline.layout.features_table).where(
        f"feature_date = DATE '{RUN_DATE}'"
    )
    assert [f.name for f in features.schema.fields] == [
        "member_id",
        "plays_7d",
        "plays_30d",
        "completes_30d",
        "completion_rate_30d",
        "distinct_titles_played_30d",
        "total_watch_seconds_30d",
        "thumbs_up_30d",
        "thumbs_down_30d",
        "last_event_time",
        "favourite_device_30d",
        "event_time",
        "feature_date",
    ]
    rows = {r.member_id: r.asDict() for r in features.collect()}
    assert set(rows) == {"m1", "m2"}
    m1 = rows["m1"]
    assert m1["completion_rate_30d"] == pytest.approx(1 / 3)
    assert {k: v for k, v in m1.items() if k != "completion_rate_30d"} == {
        "member_id": "m1",
        "plays_7d": 3,
        "plays_30d": 3,
        "completes_30d": 1,
        "distinct_titles_played_30d": 2,
        "total_watch_seconds_30d": 4500,
        "thumbs_up_30d": 1,
        "thumbs_down_30d": 0,
        "last_event_time": datetime(2024, 5, 10, 13, 30),
        "favourite_device_30d": "mobile",
        "event_time": datetime(2024, 5, 10, 23, 59, 59, 999000),
        "feature_date": RUN_DATE,
    }
    assert rows["m2"]["plays_30d"] == 1
    assert rows["m2"]["completion_rate_30d"] == 0.0
    assert rows["m2"]["total_watch_seconds_30d"] == 100
    # One event each on mobile and tv: the tie goes to the alphabetically first device.
    assert rows["m2"]["favourite_device_30d"] == "mobile"


def test_check_events_assigns_first_matching_reason(spark) -> None:
    def row(event_id, event_type="PLAY", when=None, watch=10, member="m", corrupt=None):
        millis = int((when or at(RUN_DATE, 9)).timestamp() * 1000)
        return (event_id, member, "t", event_type, millis, watch, "tv", "US", corrupt)

    raw = spark.createDataFrame(
        [
            row("ok"),
            row("late-copy", when=at(RUN_DATE, 10)),
            row("late-copy", when=at(RUN_DATE, 9)),
            # The broken copy is the earliest, but must not displace its valid twin.
            row("twin", event_type="NOPE", when=at(RUN_DATE, 1)),
            row("twin", when=at(RUN_DATE, 2)),
            row("both-bad", event_type="NOPE", watch=-1),
            row("neg", watch=-1),
            row("no-member", member=None),
            row(None),
            row("corrupt", corrupt="{"),
            row("day-before", when=at(PREVIOUS_DATE, 23, 59, 59, 999000)),
            row("day-after", when=at(date(2024, 5, 11), 0)),
        ],
        etl.RAW_SCHEMA,
    )
    checked = etl.check_events(raw, RUN_DATE).collect()
    result = sorted(
        ((r.event_id or "", r.event_time, r.quarantine_reason or "") for r in checked),
        key=lambda t: (t[0], t[1]),
    )
    nine, ten = (int(at(RUN_DATE, h).timestamp() * 1000) for h in (9, 10))
    assert [(e, reason) for e, _, reason in result] == [
        ("", "missing_event_id"),
        ("both-bad", "unknown_event_type"),
        ("corrupt", "malformed_record"),
        ("day-after", "event_date_mismatch"),
        ("day-before", "event_date_mismatch"),
        ("late-copy", ""),
        ("late-copy", "duplicate_event_id"),
        ("neg", "negative_watch_seconds"),
        ("no-member", "missing_member_id"),
        ("ok", ""),
        ("twin", "unknown_event_type"),
        ("twin", ""),
    ]
    late_copies = [(t, reason) for e, t, reason in result if e == "late-copy"]
    assert late_copies == [(nine, ""), (ten, "duplicate_event_id")]


def test_compute_member_features_window_edges(spark) -> None:
    from pyspark.sql import functions as sf

    def row(member, event_type, day, watch=None, device="tv", title="t1"):
        return ("id", member, title, event_type, at(day, 12), watch, device, "US", day)

    days_before = [date.fromordinal(RUN_DATE.toordinal() - n) for n in range(31)]
    curated = spark.createDataFrame(
        [
            row("a", "PLAY", RUN_DATE, 10, title="t1"),
            row("a", "PLAY", days_before[6], 20, title="t2"),
            row("a", "PLAY", days_before[7], 30, title="t3"),
            row("a", "PLAY", days_before[29], 40, title="t4"),
            row("a", "PLAY", days_before[30], 1000, title="t5", device="web"),
            row("a", "PLAY", date(2024, 5, 11), 1000, device="web"),
            row("a", "COMPLETE", days_before[29], 50, title="t4"),
            row("a", "THUMBS_DOWN", days_before[1], device="mobile"),
            row("b", "COMPLETE", RUN_DATE, 70),
            row("b", "COMPLETE", RUN_DATE, 80),
            row("b", "PLAY", RUN_DATE, 90),
            row("c", "IMPRESSION", RUN_DATE),
            row("d", "PLAY", days_before[30], 5),
        ],
        "event_id string, member_id string, title_id string, event_type string, "
        "event_time timestamp, watch_seconds int, device_type string, country string, "
        "event_date date",
    )
    features = etl.compute_member_features(curated, RUN_DATE).orderBy("member_id")
    rows = {r.member_id: r for r in features.collect()}

    assert set(rows) == {"a", "b", "c"}
    a = rows["a"]
    assert (a.plays_7d, a.plays_30d, a.completes_30d) == (2, 4, 1)
    assert a.completion_rate_30d == 0.25
    assert a.distinct_titles_played_30d == 4
    assert a.total_watch_seconds_30d == 150
    assert (a.thumbs_up_30d, a.thumbs_down_30d) == (0, 1)
    assert a.last_event_time == datetime(2024, 5, 10, 12, 0)
    assert a.favourite_device_30d == "tv"
    assert rows["b"].completion_rate_30d == 1.0
    assert rows["c"].completion_rate_30d is None
    assert rows["c"].total_watch_seconds_30d == 0
    assert rows["c"].plays_30d == 0
    assert features.select(sf.countDistinct("feature_date")).first()[0] == 1


def test_rerun_with_no_valid_rows_empties_the_partitions(spark, tmp_path: Path) -> None:
    layout = new_layout(spark, tmp_path, "emptied")
    write_raw(layout.raw, RUN_DATE, 8, RUN_DAY_MIDNIGHT_LINES)
    first = run_etl(spark, layout, RUN_DATE)
    assert (first["curated_rows"], first["feature_rows"]) == (2, 1)

    write_raw(layout.raw, RUN_DATE, 8, ["not json at all"])
    second = run_etl(spark, layout, RUN_DATE)

    assert second == {
        "run_date": "2024-05-10",
        "rows_read": 1,
        "rows_valid": 0,
        "rows_quarantined": 1,
        "quarantined_by_reason": {"malformed_record": 1},
        "curated_rows": 0,
        "feature_rows": 0,
    }
    assert spark.table(layout.curated_table).count() == 0
    assert spark.table(layout.features_table).count() == 0
    assert not list(layout.curated.rglob("*.parquet"))
    assert not list(layout.features.rglob("*.parquet"))
    # The catalog partition stays (the job holds no delete-partition permission), just empty.
    partitions = [
        r.partition for r in spark.sql(f"SHOW PARTITIONS {layout.curated_table}").collect()
    ]
    assert partitions == ["event_date=2024-05-10"]
    assert [r["quarantine_reason"] for r in quarantine_records(layout, RUN_DATE)] == [
        "malformed_record"
    ]


def test_missing_raw_partition_is_an_input_error(
    spark, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = new_layout(spark, tmp_path, "noraw")
    assert etl.main(layout.argv(RUN_DATE), spark=spark) == 2
    expected = f"raw partition not found: {layout.raw}/event_date=2024-05-10"
    assert f"interaction_etl: error: {expected}" in capsys.readouterr().err
    assert not layout.metrics.exists()


def test_missing_database_is_an_input_error(
    spark, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = Layout(tmp_path, "curated_absent", "features_absent")
    write_raw(layout.raw, RUN_DATE, 0, RUN_DAY_MIDNIGHT_LINES)
    assert etl.main(layout.argv(RUN_DATE), spark=spark) == 2
    assert "catalog database does not exist: curated_absent" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--run-date", "2024-13-01", "argument --run-date: not a YYYY-MM-DD date: '2024-13-01'"),
        (
            "--curated-database",
            "curated-db",
            "argument --curated-database: not a catalog identifier: 'curated-db'",
        ),
        ("--raw-path", " ", "--raw-path must not be empty"),
    ],
)
def test_invalid_arguments(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = Layout(Path("/tmp/x"), "c", "f").argv(RUN_DATE)
    argv[argv.index(flag) + 1] = value
    with pytest.raises(SystemExit) as exit_info:
        etl.parse_args(argv)
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("metrics_path", "expected"),
    [
        (
            "s3://curated/_runs/member_interactions/",
            "s3://curated/_runs/member_interactions/2024-05-10.json",
        ),
        ("/tmp/metrics.json", "/tmp/metrics.json"),
    ],
)
def test_metrics_file(metrics_path: str, expected: str) -> None:
    assert etl.metrics_file(metrics_path, RUN_DATE) == expected


def test_metrics_prefix_gets_one_file_per_run_date(spark, tmp_path: Path) -> None:
    layout = new_layout(spark, tmp_path, "metricsprefix")
    write_raw(layout.raw, RUN_DATE, 0, RUN_DAY_MIDNIGHT_LINES)
    argv = layout.argv(RUN_DATE)
    prefix = tmp_path / "_runs" / "member_interactions"
    argv[argv.index("--metrics-path") + 1] = f"{prefix}/"
    assert etl.main(argv, spark=spark) == 0
    written = json.loads((prefix / "2024-05-10.json").read_text(encoding="utf-8"))
    assert (written["rows_read"], written["curated_rows"], written["feature_rows"]) == (2, 2, 1)


def test_event_types_match_the_avro_enum(event_schema: dict) -> None:
    enum = next(f["type"] for f in event_schema["fields"] if f["name"] == "event_type")
    assert tuple(enum["symbols"]) == etl.EVENT_TYPES


def test_schema_file_parses_with_java_avro(spark, schema_path: Path) -> None:
    parser = spark.sparkContext._jvm.org.apache.avro.Schema.Parser()
    schema = parser.parse(schema_path.read_text(encoding="utf-8"))
    assert schema.getFullName() == "com.mlplatform.events.MemberInteractionEvent"
    assert schema.getField("event_time").schema().getLogicalType().getName() == ("timestamp-millis")
    watch_seconds = schema.getField("watch_seconds")
    assert watch_seconds.hasDefaultValue()
    assert watch_seconds.schema().toString() == '["null","int"]'
