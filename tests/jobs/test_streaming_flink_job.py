"""Tests for the PyFlink job's command line and sink definitions (no Flink runtime needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.streaming import flink_job

KAFKA_ARGS = [
    "--bootstrap-servers",
    "b-1.msk.example.internal:9098,b-2.msk.example.internal:9098",
    "--topic",
    "member-interactions",
    "--group-id",
    "raw-ingest",
]


def test_kafka_mode_arguments() -> None:
    args = flink_job.parse_args([*KAFKA_ARGS, "--raw-bucket", "mlp-raw-123456789012"])
    assert args.topic == "member-interactions"
    assert args.group_id == "raw-ingest"
    assert args.source_file is None
    assert args.starting_offsets == "committed"
    assert args.max_future_skew_seconds == 300
    assert args.checkpoint_interval_ms == 60_000
    assert flink_job.output_root(args) == "s3://mlp-raw-123456789012"


def test_file_mode_needs_no_kafka_arguments() -> None:
    args = flink_job.parse_args(
        ["--source-file", "/tmp/in.jsonl", "--output-root", "file:///tmp/raw/"]
    )
    assert args.source_file == "/tmp/in.jsonl"
    assert flink_job.output_root(args) == "file:///tmp/raw"


def test_jars_are_split_into_uris() -> None:
    args = flink_job.parse_args(
        [
            "--source-file",
            "in.txt",
            "--output-root",
            "/tmp/o",
            "--jars",
            "file:///opt/lib/flink-connector-kafka.jar, file:///opt/lib/kafka-clients.jar",
        ]
    )
    assert args.jars == [
        "file:///opt/lib/flink-connector-kafka.jar",
        "file:///opt/lib/kafka-clients.jar",
    ]


def test_missing_schema_file_is_reported_before_flink_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.avsc"
    argv = ["--source-file", "in.txt", "--output-root", "/tmp/o", "--schema-path", str(missing)]
    assert flink_job.main(argv) == 1
    assert capsys.readouterr().err == (f"flink_job: error: Avro schema file not found: {missing}\n")


def test_msk_iam_properties() -> None:
    assert flink_job.kafka_properties() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "AWS_MSK_IAM",
        "sasl.jaas.config": "software.amazon.msk.auth.iam.IAMLoginModule required;",
        "sasl.client.callback.handler.class": (
            "software.amazon.msk.auth.iam.IAMClientCallbackHandler"
        ),
    }


def test_flink_configuration_enables_exactly_once_checkpoints() -> None:
    args = flink_job.parse_args([*KAFKA_ARGS, "--raw-bucket", "raw-b"])
    assert flink_job.flink_configuration(args) == {
        "execution.checkpointing.interval": "60000 ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
    }


def test_flink_configuration_with_checkpoint_dir_and_parallelism() -> None:
    args = flink_job.parse_args(
        [
            *KAFKA_ARGS,
            "--raw-bucket",
            "raw-b",
            "--checkpoint-dir",
            "s3://ckpt/flink/member-interactions",
            "--checkpoint-interval-ms",
            "30000",
            "--parallelism",
            "4",
        ]
    )
    assert flink_job.flink_configuration(args) == {
        "execution.checkpointing.interval": "30000 ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.storage": "filesystem",
        "execution.checkpointing.dir": "s3://ckpt/flink/member-interactions",
        "parallelism.default": "4",
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--topic", "t", "--raw-bucket", "raw-bucket"],
            "Kafka source needs --bootstrap-servers, --group-id (or use --source-file)",
        ),
        (
            ["--source-file", "in.txt", "--topic", "t", "--output-root", "/tmp/o"],
            "--source-file cannot be combined with --topic",
        ),
        (
            [*KAFKA_ARGS[:1], "broker-without-port", *KAFKA_ARGS[2:], "--raw-bucket", "raw-b"],
            "--bootstrap-servers entries must be host:port, got 'broker-without-port'",
        ),
        (
            [*KAFKA_ARGS, "--raw-bucket", "s3://raw-bucket"],
            "--raw-bucket must be a bare S3 bucket name, got 's3://raw-bucket'",
        ),
        (
            [*KAFKA_ARGS, "--raw-bucket", "raw-b", "--max-future-skew-seconds", "-5"],
            "--max-future-skew-seconds must not be negative",
        ),
        (
            [*KAFKA_ARGS, "--raw-bucket", "raw-b", "--checkpoint-interval-ms", "0"],
            "--checkpoint-interval-ms must be positive",
        ),
        (
            [*KAFKA_ARGS, "--raw-bucket", "raw-b", "--parallelism", "0"],
            "--parallelism must be positive",
        ),
        (KAFKA_ARGS, "one of the arguments --raw-bucket --output-root is required"),
        (
            [*KAFKA_ARGS, "--raw-bucket", "raw-b", "--jars", "/opt/lib/connector.jar"],
            "argument --jars: expected comma-separated URIs such as "
            "file:///path/connector.jar, got '/opt/lib/connector.jar'",
        ),
        (
            [*KAFKA_ARGS, "--raw-bucket", "a-b", "--output-root", "/tmp/o"],
            "argument --output-root: not allowed with argument --raw-bucket",
        ),
    ],
)
def test_invalid_arguments_exit_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        flink_job.parse_args(argv)
    assert exit_info.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err


def test_sink_ddl_partitions_by_every_column_but_the_line() -> None:
    ddl = flink_job.filesystem_sink_ddl(
        "raw_events", "s3://raw/streaming/member_interactions", ("line", "event_date", "event_hour")
    )
    assert ddl.startswith(
        "CREATE TEMPORARY TABLE `raw_events` (`line` STRING, `event_date` STRING, "
        "`event_hour` STRING) PARTITIONED BY (`event_date`, `event_hour`) WITH ("
    )
    assert "'path' = 's3://raw/streaming/member_interactions'" in ddl
    assert "'connector' = 'filesystem'" in ddl
    assert "'format' = 'raw'" in ddl
