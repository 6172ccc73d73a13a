"""Tests for jobs.batch.feature_ingestion: the records it builds, its retries, and the job on a
real local Spark session against a fake Feature Store client (moto has no PutRecord)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from jobs.batch import feature_ingestion as ingestion
from jobs.batch import interaction_etl as etl

# PySpark 3.5 leaves the sockets it reads collect() results from to the garbage collector.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_DATE = date(2024, 5, 10)
FEATURE_GROUP = "ml-platform-dev-member-features"
REGION = "eu-west-1"
# The ETL's as-of time for RUN_DATE: its last millisecond, UTC.
AS_OF = datetime(2024, 5, 10, 23, 59, 59, 999000, tzinfo=UTC)
AS_OF_SECONDS = 1715385599.999

FULL_ROW = {
    "member_id": "m1",
    "plays_7d": 3,
    "plays_30d": 12,
    "completes_30d": 8,
    "completion_rate_30d": 2 / 3,
    "distinct_titles_played_30d": 5,
    "total_watch_seconds_30d": 86_400,
    "thumbs_up_30d": 2,
    "thumbs_down_30d": 0,
    "last_event_time": datetime(2024, 5, 10, 13, 30, 0, 123456, tzinfo=UTC),
    "favourite_device_30d": "tv",
    "feature_date": RUN_DATE,
    "event_time": AS_OF,
}
FULL_RECORD = [
    {"FeatureName": "member_id", "ValueAsString": "m1"},
    {"FeatureName": "plays_7d", "ValueAsString": "3"},
    {"FeatureName": "plays_30d", "ValueAsString": "12"},
    {"FeatureName": "completes_30d", "ValueAsString": "8"},
    {"FeatureName": "completion_rate_30d", "ValueAsString": "0.6666666666666666"},
    {"FeatureName": "distinct_titles_played_30d", "ValueAsString": "5"},
    {"FeatureName": "total_watch_seconds_30d", "ValueAsString": "86400"},
    {"FeatureName": "thumbs_up_30d", "ValueAsString": "2"},
    {"FeatureName": "thumbs_down_30d", "ValueAsString": "0"},
    {"FeatureName": "last_event_time", "ValueAsString": "2024-05-10T13:30:00.123Z"},
    {"FeatureName": "favourite_device_30d", "ValueAsString": "tv"},
    {"FeatureName": "feature_date", "ValueAsString": "2024-05-10"},
    {"FeatureName": "event_time", "ValueAsString": "1715385599.999"},
]


# --- build_record -------------------------------------------------------------------------


def test_build_record_writes_every_feature_in_definition_order():
    assert ingestion.build_record(FULL_ROW) == FULL_RECORD


def test_build_record_leaves_out_null_features():
    row = {
        **FULL_ROW,
        "member_id": "m2",
        "plays_7d": 0,
        "plays_30d": 0,
        "completion_rate_30d": None,
        "favourite_device_30d": None,
        "last_event_time": None,
        # A naive timestamp is UTC; a whole second still gets three decimals.
        "event_time": datetime(2024, 5, 10, 12, 0, 0),
    }

    assert ingestion.build_record(row) == [
        {"FeatureName": "member_id", "ValueAsString": "m2"},
        {"FeatureName": "plays_7d", "ValueAsString": "0"},
        {"FeatureName": "plays_30d", "ValueAsString": "0"},
        {"FeatureName": "completes_30d", "ValueAsString": "8"},
        {"FeatureName": "distinct_titles_played_30d", "ValueAsString": "5"},
        {"FeatureName": "total_watch_seconds_30d", "ValueAsString": "86400"},
        {"FeatureName": "thumbs_up_30d", "ValueAsString": "2"},
        {"FeatureName": "thumbs_down_30d", "ValueAsString": "0"},
        {"FeatureName": "feature_date", "ValueAsString": "2024-05-10"},
        {"FeatureName": "event_time", "ValueAsString": "1715342400.000"},
    ]


def test_build_record_converts_offset_timestamps_to_utc():
    plus_two = timezone(timedelta(hours=2))
    row = {
        **FULL_ROW,
        "last_event_time": datetime(2024, 5, 11, 1, 0, 0, 5000, tzinfo=plus_two),
        "event_time": datetime(2024, 5, 11, 1, 59, 59, 999999, tzinfo=plus_two),
    }

    record = {item["FeatureName"]: item["ValueAsString"] for item in ingestion.build_record(row)}

    assert record["last_event_time"] == "2024-05-10T23:00:00.005Z"
    assert record["event_time"] == "1715385599.999"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"member_id": None}, r"^member_id is null or empty"),
        ({"member_id": ""}, r"^member_id is null or empty"),
        ({"event_time": None}, r"^member_id='m1': event_time is null"),
        ({"completion_rate_30d": math.nan}, r"^member_id='m1': completion_rate_30d: .*finite"),
        ({"plays_7d": 1.5}, r"^member_id='m1': plays_7d: expected an integer, got 1.5"),
        ({"plays_7d": True}, r"^member_id='m1': plays_7d: expected an integer"),
        ({"favourite_device_30d": 7}, r"^member_id='m1': favourite_device_30d: expected text"),
    ],
)
def test_build_record_rejects_rows_feature_store_cannot_take(changes, message):
    with pytest.raises(ValueError, match=message):
        ingestion.build_record({**FULL_ROW, **changes})


def test_build_record_names_a_missing_column():
    row = dict(FULL_ROW)
    del row["thumbs_down_30d"]

    with pytest.raises(ValueError, match=r"^member_id='m1': the row has no thumbs_down_30d column"):
        ingestion.build_record(row)


# --- definitions --------------------------------------------------------------------------


def test_definitions_cover_the_etl_output_with_matching_types(spark):
    raw = spark.createDataFrame([], etl.RAW_SCHEMA)
    curated = etl.curate_events(etl.check_events(raw, RUN_DATE))
    etl_types = {
        column.name: column.dataType.simpleString()
        for column in etl.compute_member_features(curated, RUN_DATE).schema
    }
    expected_type = {"bigint": "Integral", "double": "Fractional", "string": "String"}

    assert [name for name, _ in ingestion.MEMBER_FEATURE_DEFINITIONS] == list(etl_types)
    # The job reads the files with this schema; feature_date is the partition folder.
    file_types = [(name, kind) for name, kind in etl_types.items() if name != "feature_date"]
    assert file_types == ingestion.FEATURE_FILE_COLUMNS
    for name, feature_type in ingestion.MEMBER_FEATURE_DEFINITIONS:
        if name == ingestion.EVENT_TIME_FEATURE:
            assert (etl_types[name], feature_type) == ("timestamp", "Fractional")
        elif etl_types[name] in ("timestamp", "date"):
            assert feature_type == "String"
        else:
            assert feature_type == expected_type[etl_types[name]], name
    assert ("member_id", "String") in ingestion.MEMBER_FEATURE_DEFINITIONS
    assert ingestion.RECORD_IDENTIFIER == "member_id"
    assert ingestion.EVENT_TIME_FEATURE == "event_time"


def test_module_imports_without_pyspark_or_boto3():
    # Mapping a module to None in sys.modules makes importing it fail, as if uninstalled.
    script = (
        "import sys\n"
        "for name in ('pyspark', 'boto3', 'botocore'):\n"
        "    sys.modules[name] = None\n"
        "from jobs.batch.feature_ingestion import MEMBER_FEATURE_DEFINITIONS as d\n"
        "print(len(d))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert (result.returncode, result.stdout, result.stderr) == (0, "13\n", "")


# --- retries ------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} from the fake"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutRecord",
    )


@dataclass
class ScriptedClient:
    """Raises the scripted errors in turn, then succeeds."""

    errors: list[Exception]
    calls: list[dict] = field(default_factory=list)

    def put_record(self, **kwargs) -> dict:
        self.calls.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return {}


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (client_error("ThrottlingException", 400), True),
        (client_error("Throttling", 400), True),
        (client_error("SlowDown", 429), True),
        (client_error("InternalFailure", 500), True),
        (client_error("ServiceUnavailable", 503), True),
        (client_error("ValidationError", 400), False),
        (client_error("ResourceNotFound", 400), False),
        (client_error("AccessForbidden", 403), False),
        (EndpointConnectionError(endpoint_url="https://featurestore-runtime"), True),
        (ReadTimeoutError(endpoint_url="https://featurestore-runtime"), True),
    ],
)
def test_is_retryable(error, retryable):
    assert ingestion.is_retryable(error) is retryable


def test_retries_with_capped_exponential_backoff():
    client = ScriptedClient([client_error("ThrottlingException", 400)] * 4)
    sleeps: list[float] = []
    policy = ingestion.RetryPolicy(max_attempts=5, base_delay_seconds=0.1, max_delay_seconds=0.25)

    attempts = ingestion.put_record_with_retries(
        client, FEATURE_GROUP, FULL_RECORD, policy, sleep=sleeps.append, jitter=lambda: 0.5
    )

    assert attempts == 5
    assert sleeps == pytest.approx([0.05, 0.1, 0.125, 0.125])
    assert client.calls == [{"FeatureGroupName": FEATURE_GROUP, "Record": FULL_RECORD}] * 5


def test_gives_up_after_max_attempts():
    client = ScriptedClient([client_error("InternalFailure", 500)] * 3)
    policy = ingestion.RetryPolicy(max_attempts=3)

    with pytest.raises(ingestion.PutRecordFailed, match=r"^gave up after 3 attempts: .*"):
        ingestion.put_record_with_retries(
            client, FEATURE_GROUP, FULL_RECORD, policy, sleep=lambda _: None
        )

    assert len(client.calls) == 3


def test_does_not_retry_a_rejected_record():
    client = ScriptedClient([client_error("ValidationError", 400)])

    with pytest.raises(ingestion.PutRecordFailed, match=r"^not retryable: .*ValidationError"):
        ingestion.put_record_with_retries(
            client, FEATURE_GROUP, FULL_RECORD, ingestion.RetryPolicy(), sleep=pytest.fail
        )

    assert len(client.calls) == 1


# --- the job on Spark ---------------------------------------------------------------------


@dataclass(frozen=True)
class FakeFeatureStore:
    """A client factory whose clients log every call as a JSON line to ``log``, since they run
    in Spark's Python workers rather than in the test process.

    Each record is throttled ``throttles`` times before it is accepted; the records of
    ``failing`` members always get an internal error.
    """

    log: str
    throttles: int = 0
    failing: frozenset[str] = frozenset()

    def __call__(self, region: str) -> FakeClient:
        self._write({"client": region})
        return FakeClient(self)

    def _write(self, entry: dict) -> None:
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    def entries(self) -> list[dict]:
        path = Path(self.log)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    def calls(self) -> list[dict]:
        return [entry["put_record"] for entry in self.entries() if "put_record" in entry]

    def clients(self) -> list[str]:
        return [entry["client"] for entry in self.entries() if "client" in entry]


class FakeClient:
    def __init__(self, store: FakeFeatureStore) -> None:
        self._store = store
        self._attempts: dict[str, int] = {}

    def put_record(self, **kwargs) -> dict:
        self._store._write({"put_record": kwargs})
        member = kwargs["Record"][0]["ValueAsString"]
        self._attempts[member] = self._attempts.get(member, 0) + 1
        if member in self._store.failing:
            raise client_error("InternalFailure", 500)
        if self._attempts[member] <= self._store.throttles:
            raise client_error("ThrottlingException", 400)
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}


def feature_row(member_id: str | None, **changes) -> dict:
    return {**FULL_ROW, "member_id": member_id, **changes}


PREVIOUS_DAY_ROW = feature_row(
    "m9", feature_date=RUN_DATE - timedelta(days=1), event_time=AS_OF - timedelta(days=1)
)
RUN_DAY_ROWS = [
    feature_row("m1"),
    feature_row(
        "m2",
        plays_7d=0,
        plays_30d=0,
        completes_30d=0,
        completion_rate_30d=None,
        favourite_device_30d=None,
        event_time=AS_OF - timedelta(hours=1),
    ),
    feature_row("m3", last_event_time=datetime(2024, 4, 30, 8, 0, 0, 250000, tzinfo=UTC)),
]

KEYLESS_DATE = date(2024, 5, 12)
KEYLESS_DATE_ROWS = [
    feature_row("m1", feature_date=KEYLESS_DATE),
    feature_row(None, feature_date=KEYLESS_DATE),
]


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features" / "member_features"

    @property
    def marker(self) -> Path:
        return self.root / "_runs" / "feature_ingestion" / "member-features.json"

    def argv(self, run_date: date = RUN_DATE, *extra: str) -> list[str]:
        return [
            "--features-path",
            str(self.features),
            "--run-date",
            run_date.isoformat(),
            "--feature-group",
            FEATURE_GROUP,
            "--region",
            REGION,
            "--marker-path",
            str(self.marker),
            *extra,
        ]


def write_features(spark, layout: Layout, rows: list[dict]) -> None:
    """Writes rows the way the ETL lays them out: Parquet partitioned by feature_date."""
    frame = spark.createDataFrame(rows, schema=ETL_FEATURES_SCHEMA)
    frame.coalesce(1).write.mode("append").partitionBy("feature_date").parquet(str(layout.features))


ETL_FEATURES_SCHEMA = (
    "member_id string, plays_7d bigint, plays_30d bigint, completes_30d bigint, "
    "completion_rate_30d double, distinct_titles_played_30d bigint, "
    "total_watch_seconds_30d bigint, thumbs_up_30d bigint, thumbs_down_30d bigint, "
    "last_event_time timestamp, favourite_device_30d string, feature_date date, "
    "event_time timestamp"
)


@pytest.fixture(scope="module")
def features_root(spark, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A features table with the run date's three members, one member the day before, and on
    KEYLESS_DATE a member and a row without member_id."""
    layout = Layout(tmp_path_factory.mktemp("features"))
    write_features(spark, layout, [PREVIOUS_DAY_ROW, *RUN_DAY_ROWS, *KEYLESS_DATE_ROWS])
    return layout.features


@pytest.fixture
def layout(features_root: Path, tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.features.parent.mkdir(parents=True)
    layout.features.symlink_to(features_root, target_is_directory=True)
    return layout


@pytest.fixture
def store(tmp_path: Path) -> FakeFeatureStore:
    # The fake travels to Spark's Python workers, which cannot import this test module.
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return FakeFeatureStore(str(tmp_path / "calls.jsonl"))


def expected_call(row: dict) -> dict:
    return {"FeatureGroupName": FEATURE_GROUP, "Record": ingestion.build_record(row)}


def by_member(calls: list[dict]) -> list[dict]:
    return sorted(calls, key=lambda call: call["Record"][0]["ValueAsString"])


def test_puts_each_record_of_the_run_date_and_writes_the_marker(
    spark, layout, store, capsys: pytest.CaptureFixture[str]
):
    started = datetime.now(UTC)

    exit_code = ingestion.main(layout.argv(), spark=spark, client_factory=store)

    assert exit_code == 0
    calls = by_member(store.calls())
    assert calls == [expected_call(row) for row in RUN_DAY_ROWS]
    # The values survive the Parquet round trip, whatever the executors' time zone.
    assert calls[0]["Record"] == FULL_RECORD
    m2, m3 = ({i["FeatureName"]: i["ValueAsString"] for i in c["Record"]} for c in calls[1:])
    assert (m2["event_time"], "completion_rate_30d" in m2) == ("1715381999.999", False)
    assert m3["last_event_time"] == "2024-04-30T08:00:00.250Z"
    assert store.clients() == [REGION]
    marker = json.loads(layout.marker.read_text(encoding="utf-8"))
    ingested_at = marker.pop("ingested_at")
    assert marker == {
        "feature_group": FEATURE_GROUP,
        "run_date": "2024-05-10",
        "records": 3,
        "newest_event_time": AS_OF_SECONDS,
    }
    assert ingested_at.endswith("Z")
    assert (
        started - timedelta(seconds=1) <= datetime.fromisoformat(ingested_at) <= (datetime.now(UTC))
    )
    assert json.loads(capsys.readouterr().out) == {**marker, "ingested_at": ingested_at}


def test_retries_throttled_records_and_succeeds(spark, layout, store):
    throttling = FakeFeatureStore(store.log, throttles=2)

    exit_code = ingestion.main(layout.argv(), spark=spark, client_factory=throttling)

    assert exit_code == 0
    assert by_member(throttling.calls()) == [
        expected_call(row) for row in RUN_DAY_ROWS for _ in range(3)
    ]
    assert json.loads(layout.marker.read_text(encoding="utf-8"))["records"] == 3


def test_a_failing_record_fails_the_job_without_a_marker(
    spark, layout, store, capsys: pytest.CaptureFixture[str]
):
    layout.marker.parent.mkdir(parents=True)
    layout.marker.write_text('{"run_date": "2024-05-09"}', encoding="utf-8")
    failing = FakeFeatureStore(store.log, failing=frozenset({"m2"}))

    exit_code = ingestion.main(
        layout.argv(RUN_DATE, "--max-attempts", "3"), spark=spark, client_factory=failing
    )

    assert exit_code == 1
    calls = [call["Record"][0]["ValueAsString"] for call in failing.calls()]
    assert sorted(calls) == ["m1", "m2", "m2", "m2", "m3"]
    error = capsys.readouterr().err
    assert error.startswith(
        f"feature_ingestion: error: {FEATURE_GROUP} 2024-05-10: 1 of 3 records failed to "
        "ingest; first failures: member_id='m2': gave up after 3 attempts: An error occurred "
        "(InternalFailure)"
    )
    assert error.endswith("; 2 succeeded; no marker written\n")
    assert layout.marker.read_text(encoding="utf-8") == '{"run_date": "2024-05-09"}'


def test_a_row_without_its_key_fails_the_job(spark, layout, store, capsys):
    exit_code = ingestion.main(layout.argv(KEYLESS_DATE), spark=spark, client_factory=store)

    assert exit_code == 1
    assert store.calls() == [expected_call(KEYLESS_DATE_ROWS[0])]
    assert "1 of 2 records failed to ingest; first failures: member_id=None: member_id is null" in (
        capsys.readouterr().err
    )
    assert not layout.marker.exists()


def test_a_missing_partition_is_an_input_error(spark, layout, store, capsys):
    exit_code = ingestion.main(layout.argv(date(2024, 5, 11)), spark=spark, client_factory=store)

    assert exit_code == 2
    assert capsys.readouterr().err == (
        "feature_ingestion: error: feature partition not found: "
        f"{layout.features}/feature_date=2024-05-11\n"
    )
    assert store.entries() == []
    assert not layout.marker.exists()


def test_an_empty_partition_is_an_input_error(spark, tmp_path, store, capsys):
    # What the ETL leaves for a day without members: the partition folder, emptied.
    layout = Layout(tmp_path)
    (layout.features / "feature_date=2024-05-10").mkdir(parents=True)

    exit_code = ingestion.main(layout.argv(), spark=spark, client_factory=store)

    assert exit_code == 2
    assert capsys.readouterr().err == (
        "feature_ingestion: error: feature partition has no rows: "
        f"{layout.features}/feature_date=2024-05-10\n"
    )
    assert store.entries() == []
    assert not layout.marker.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-attempts", "0"], "not a positive integer: '0'"),
        (["--feature-group", " "], "--feature-group must not be empty"),
    ],
)
def test_rejects_bad_arguments(layout, extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ingestion.parse_args(layout.argv(RUN_DATE, *extra))

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
