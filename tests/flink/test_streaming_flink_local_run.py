"""Runs the PyFlink job end to end on a local mini-cluster in file-source mode.

Needs the ``apache-flink`` package and a JVM, so it runs in ``.venv-flink`` (``make
test-flink``), never in the project venv; without PyFlink the module fails to import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Imported here, not skipped with importorskip: an environment without PyFlink must fail.
import pyflink  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_EVENT = {
    "member_id": "member-1",
    "title_id": "title-42",
    "event_type": "PLAY",
    "watch_seconds": 600,
    "device_type": "tv",
    "country": "GB",
}


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def read_lines(directory: Path) -> list[dict]:
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return [json.loads(line) for f in files for line in f.read_text("utf-8").splitlines()]


def run_job(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Flink starts its Python workers as `python` from PATH; make that this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "jobs.streaming.flink_job", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_kafka_mode_without_connector_jars_fails_clearly(tmp_path: Path) -> None:
    result = run_job(
        [
            "--bootstrap-servers",
            "localhost:9098",
            "--topic",
            "member-interactions",
            "--group-id",
            "raw-ingest",
            "--output-root",
            (tmp_path / "raw").as_uri(),
        ]
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "flink_job: error: Kafka source classes not on the classpath: "
        "org.apache.flink.connector.kafka.source.KafkaSource, "
        "org.apache.kafka.common.serialization.ByteArrayDeserializer, "
        "software.amazon.msk.auth.iam.IAMClientCallbackHandler; pass the "
        "flink-connector-kafka, kafka-clients and aws-msk-iam-auth jars with --jars"
    )


def test_local_run_lands_valid_and_dead_letter_records(tmp_path: Path) -> None:
    before_hour = {
        **BASE_EVENT,
        "event_id": "00000000-0000-4000-8000-000000000001",
        "event_time": millis(datetime(2024, 5, 9, 23, 59, 59, 999000, tzinfo=UTC)),
    }
    on_the_hour = {
        **BASE_EVENT,
        "event_id": "00000000-0000-4000-8000-000000000002",
        "event_type": "IMPRESSION",
        "watch_seconds": None,
        "event_time": millis(datetime(2024, 5, 10, 0, 0, tzinfo=UTC)),
    }
    missing_country = {k: v for k, v in before_hour.items() if k != "country"}
    future = {
        **before_hour,
        "event_time": millis(datetime.now(UTC) + timedelta(days=1)),
    }
    lines = [
        json.dumps(before_hour),
        json.dumps(on_the_hour),
        json.dumps({**before_hour, "event_type": "PAUSE"}),
        "this is not json",
        json.dumps(missing_country),
        json.dumps(future),
    ]
    source = tmp_path / "messages.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "raw"

    started = datetime.now(UTC)
    result = run_job(
        [
            "--source-file",
            str(source),
            "--output-root",
            output.as_uri(),
            "--checkpoint-interval-ms",
            "500",
            "--parallelism",
            "1",
        ]
    )
    finished = datetime.now(UTC)
    assert result.returncode == 0, result.stderr[-4000:]

    valid_root = output / "streaming" / "member_interactions"
    assert sorted(str(p.relative_to(valid_root)) for p in valid_root.glob("*/*")) == [
        "event_date=2024-05-09/event_hour=23",
        "event_date=2024-05-10/event_hour=00",
    ]
    assert read_lines(valid_root / "event_date=2024-05-09" / "event_hour=23") == [before_hour]
    assert read_lines(valid_root / "event_date=2024-05-10" / "event_hour=00") == [on_the_hour]

    dead_root = output / "streaming" / "_dead_letter" / "member_interactions"
    ingest_dirs = sorted(p.name for p in dead_root.iterdir())
    run_dates = {f"ingest_date={d:%Y-%m-%d}" for d in (started, finished)}
    assert set(ingest_dirs) <= run_dates
    dead_letters = [rec for d in ingest_dirs for rec in read_lines(dead_root / d)]
    by_raw = {rec["raw"]: rec for rec in dead_letters}
    assert len(dead_letters) == 4
    assert by_raw[lines[2]]["reason"] == "unknown event_type 'PAUSE'"
    assert by_raw[lines[3]]["reason"] == "not JSON: Expecting value at line 1 column 1"
    assert by_raw[lines[4]]["reason"] == "missing field country"
    future_reason = by_raw[lines[5]]["reason"]
    assert future_reason.startswith("event_time is ")
    assert future_reason.endswith(" ms ahead of received_at (max allowed skew 300000 ms)")
    assert {rec["raw_encoding"] for rec in dead_letters} == {"utf-8"}
