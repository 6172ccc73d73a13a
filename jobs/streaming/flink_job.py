"""PyFlink DataStream job landing member-interaction events in the S3 raw zone.

Reads raw message values from an MSK topic with IAM authentication (or, for local runs and
tests, from a text file of one message per line), validates and routes each one with
:mod:`jobs.streaming.records`, and writes:

* valid events as JSON lines under ``<root>/streaming/member_interactions/``, bucketed into
  ``event_date=YYYY-MM-DD/event_hour=HH/`` from each event's own ``event_time`` (UTC);
* rejected messages as dead-letter JSON lines under
  ``<root>/streaming/_dead_letter/member_interactions/ingest_date=YYYY-MM-DD/``.

Checkpointing is always on: part files become visible only when the checkpoint that covers
them completes, which is what makes the output exactly-once with respect to Kafka offsets.

Run as a module so the ``jobs`` package resolves, e.g. ``python -m jobs.streaming.flink_job``
locally or ``flink run -pym jobs.streaming.flink_job -pyfs jobs.zip`` on EMR.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from jobs.layout import DEAD_LETTER_PREFIX, RAW_EVENTS_PREFIX
from jobs.streaming.records import (
    DEFAULT_MAX_FUTURE_SKEW,
    EventProcessor,
    default_schema_path,
    load_schema,
)

MSK_IAM_PROPERTIES = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "AWS_MSK_IAM",
    "sasl.jaas.config": "software.amazon.msk.auth.iam.IAMLoginModule required;",
    "sasl.client.callback.handler.class": ("software.amazon.msk.auth.iam.IAMClientCallbackHandler"),
}
KAFKA_SOURCE_CLASSES = (
    "org.apache.flink.connector.kafka.source.KafkaSource",
    "org.apache.kafka.common.serialization.ByteArrayDeserializer",
    "software.amazon.msk.auth.iam.IAMClientCallbackHandler",
)
_BOOTSTRAP_SERVER = re.compile(r"[A-Za-z0-9.\-]+:\d{1,5}")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_VALID_COLUMNS = ("line", "event_date", "event_hour")
_DEAD_LETTER_COLUMNS = ("line", "ingest_date")


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of the job."""
    parser = argparse.ArgumentParser(
        prog="flink_job",
        description="Validate member-interaction events from MSK and land them in the raw zone.",
    )
    source = parser.add_argument_group("source (Kafka unless --source-file is given)")
    source.add_argument("--bootstrap-servers", help="MSK IAM bootstrap brokers, host:port,...")
    source.add_argument("--topic", help="Kafka topic carrying MemberInteractionEvent JSON")
    source.add_argument("--group-id", help="Kafka consumer group id")
    source.add_argument(
        "--starting-offsets",
        choices=("committed", "earliest", "latest"),
        default="committed",
        help="where a consumer group without committed offsets starts (default: committed, "
        "falling back to earliest)",
    )
    source.add_argument(
        "--source-file",
        help="read messages from this text file, one per line, instead of Kafka",
    )
    sink = parser.add_mutually_exclusive_group(required=True)
    sink.add_argument("--raw-bucket", help="name of the S3 raw-zone bucket")
    sink.add_argument(
        "--output-root",
        help="any Flink filesystem URI used instead of s3://<raw bucket> (e.g. file:///tmp/raw)",
    )
    parser.add_argument(
        "--schema-path",
        default=None,
        help=f"Avro schema of the event (default: {default_schema_path()})",
    )
    parser.add_argument(
        "--max-future-skew-seconds",
        type=int,
        default=int(DEFAULT_MAX_FUTURE_SKEW.total_seconds()),
        help="reject events whose event_time is further than this ahead of arrival",
    )
    parser.add_argument(
        "--checkpoint-interval-ms", type=int, default=60_000, help="checkpoint interval"
    )
    parser.add_argument(
        "--checkpoint-dir", default=None, help="durable checkpoint storage URI, e.g. s3://..."
    )
    parser.add_argument("--parallelism", type=int, default=None, help="job parallelism")
    parser.add_argument(
        "--jars",
        type=_uri_list,
        default=[],
        help="comma-separated jar URIs (file://...) to load and ship with the job, e.g. the "
        "Kafka connector, kafka-clients and aws-msk-iam-auth",
    )
    parser.add_argument("--job-name", default="member-interactions-raw-ingest")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check arguments, exiting with a usage error naming the problem."""
    parser = build_parser()
    args = parser.parse_args(argv)
    kafka_args = {
        "--bootstrap-servers": args.bootstrap_servers,
        "--topic": args.topic,
        "--group-id": args.group_id,
    }
    if args.source_file is not None:
        given = [flag for flag, value in kafka_args.items() if value is not None]
        if given:
            parser.error(f"--source-file cannot be combined with {', '.join(given)}")
    else:
        missing = [flag for flag, value in kafka_args.items() if not value]
        if missing:
            parser.error(f"Kafka source needs {', '.join(missing)} (or use --source-file)")
        bad = [s for s in args.bootstrap_servers.split(",") if not _BOOTSTRAP_SERVER.fullmatch(s)]
        if bad:
            parser.error(f"--bootstrap-servers entries must be host:port, got {bad[0]!r}")
    if args.raw_bucket is not None and not _BUCKET_NAME.fullmatch(args.raw_bucket):
        parser.error(f"--raw-bucket must be a bare S3 bucket name, got {args.raw_bucket!r}")
    if args.max_future_skew_seconds < 0:
        parser.error("--max-future-skew-seconds must not be negative")
    if args.checkpoint_interval_ms <= 0:
        parser.error("--checkpoint-interval-ms must be positive")
    if args.parallelism is not None and args.parallelism <= 0:
        parser.error("--parallelism must be positive")
    return args


def output_root(args: argparse.Namespace) -> str:
    """Return the filesystem URI under which the raw-zone prefixes are written."""
    if args.raw_bucket is not None:
        return f"s3://{args.raw_bucket}"
    return args.output_root.rstrip("/")


def kafka_properties() -> dict[str, str]:
    """Return the Kafka client properties for MSK IAM authentication."""
    return dict(MSK_IAM_PROPERTIES)


def flink_configuration(args: argparse.Namespace) -> dict[str, str]:
    """Return the Flink options the job runs with: exactly-once checkpoints, kept on cancel."""
    options = {
        "execution.checkpointing.interval": f"{args.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
    }
    if args.checkpoint_dir:
        options["execution.checkpointing.storage"] = "filesystem"
        options["execution.checkpointing.dir"] = args.checkpoint_dir
    if args.parallelism:
        options["parallelism.default"] = str(args.parallelism)
    return options


def filesystem_sink_ddl(table: str, path: str, columns: Sequence[str]) -> str:
    """Return the DDL of a partitioned filesystem sink writing the ``line`` column verbatim.

    Every column except ``line`` is a partition column, so the sink's bucket assigner places
    each line under ``path/<col>=<value>/...`` in column order.
    """
    partitions = ", ".join(f"`{c}`" for c in columns[1:])
    fields = ", ".join(f"`{c}` STRING" for c in columns)
    return (
        f"CREATE TEMPORARY TABLE `{table}` ({fields}) PARTITIONED BY ({partitions}) WITH ("
        "'connector' = 'filesystem', "
        f"'path' = '{path}', "
        "'format' = 'raw', "
        "'raw.charset' = 'UTF-8', "
        "'sink.rolling-policy.file-size' = '128MB', "
        "'sink.rolling-policy.rollover-interval' = '15 min', "
        "'sink.rolling-policy.check-interval' = '1 min')"
    )


class JobSetupError(RuntimeError):
    """Raised when the job cannot be built from its arguments and classpath."""


def run(args: argparse.Namespace, schema: dict[str, Any]) -> None:
    """Build the job graph for ``args`` and execute it until the source ends or fails.

    ``schema`` is the parsed event schema; it travels to the Python workers inside the
    routing function, so the schema file is only read where the job is submitted.
    """
    from pyflink.common import Configuration, Row, Types, WatermarkStrategy
    from pyflink.datastream import OutputTag, ProcessFunction, StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    max_skew = timedelta(seconds=args.max_future_skew_seconds)
    valid_type = Types.ROW_NAMED(list(_VALID_COLUMNS), [Types.STRING()] * len(_VALID_COLUMNS))
    dead_letter_type = Types.ROW_NAMED(
        list(_DEAD_LETTER_COLUMNS), [Types.STRING()] * len(_DEAD_LETTER_COLUMNS)
    )
    dead_letter_tag = OutputTag("dead-letter", dead_letter_type)

    class RouteEvents(ProcessFunction):
        """Emits valid events on the main output and rejects on the dead-letter output."""

        def __init__(self) -> None:
            super().__init__()
            self._processor: EventProcessor | None = None

        def open(self, runtime_context: Any) -> None:
            self._processor = EventProcessor(schema, max_future_skew=max_skew)

        def process_element(self, value: bytes | str, ctx: Any):
            routed = self._processor.process(value)
            partition = dict(routed.partition)
            if routed.is_valid:
                yield Row(routed.to_json_line(), partition["event_date"], partition["event_hour"])
            else:
                yield dead_letter_tag, Row(routed.to_json_line(), partition["ingest_date"])

    config = Configuration()
    for key, value in flink_configuration(args).items():
        config.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(config)
    if args.jars:
        env.add_jars(*args.jars)

    messages = env.from_source(
        _build_source(args), WatermarkStrategy.no_watermarks(), "member-interactions-source"
    )
    routed = messages.process(RouteEvents(), output_type=valid_type).name("validate-and-route")
    dead_letters = routed.get_side_output(dead_letter_tag)

    root = output_root(args)
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(
        filesystem_sink_ddl("raw_events", f"{root}/{RAW_EVENTS_PREFIX}", _VALID_COLUMNS)
    )
    t_env.execute_sql(
        filesystem_sink_ddl("dead_letters", f"{root}/{DEAD_LETTER_PREFIX}", _DEAD_LETTER_COLUMNS)
    )
    statements = t_env.create_statement_set()
    statements.add_insert("raw_events", t_env.from_data_stream(routed))
    statements.add_insert("dead_letters", t_env.from_data_stream(dead_letters))
    statements.attach_as_datastream()
    env.execute(args.job_name)


def _build_source(args: argparse.Namespace) -> Any:
    if args.source_file is not None:
        from pyflink.datastream.connectors.file_system import FileSource, StreamFormat

        return FileSource.for_record_stream_format(
            StreamFormat.text_line_format(), args.source_file
        ).build()

    from py4j.protocol import Py4JJavaError
    from pyflink.datastream.connectors.kafka import (
        KafkaOffsetResetStrategy,
        KafkaOffsetsInitializer,
        KafkaSource,
    )
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import load_java_class

    missing = []
    for class_name in KAFKA_SOURCE_CLASSES:
        try:
            load_java_class(class_name)
        except Py4JJavaError:
            missing.append(class_name)
    if missing:
        raise JobSetupError(
            f"Kafka source classes not on the classpath: {', '.join(missing)}; pass the "
            "flink-connector-kafka, kafka-clients and aws-msk-iam-auth jars with --jars"
        )
    offsets = {
        "committed": KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST),
        "earliest": KafkaOffsetsInitializer.earliest(),
        "latest": KafkaOffsetsInitializer.latest(),
    }[args.starting_offsets]
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(args.bootstrap_servers)
        .set_topics(args.topic)
        .set_group_id(args.group_id)
        .set_starting_offsets(offsets)
        .set_properties(kafka_properties())
    )
    # PyFlink only wraps String deserializers, and decoding in the JVM would replace invalid
    # UTF-8 with U+FFFD; handing the Python side the raw bytes lets records.py dead-letter such
    # messages with their original payload.
    jvm = get_gateway().jvm
    byte_array_deserializer = load_java_class(KAFKA_SOURCE_CLASSES[1])
    builder._j_builder.setDeserializer(
        jvm.org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema.valueOnly(
            byte_array_deserializer
        )
    )
    return builder.build()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``) and run the job.

    Returns 1 after printing the problem when the schema or the classpath is unusable.
    """
    args = parse_args(argv)
    try:
        run(args, load_schema(args.schema_path))
    except (FileNotFoundError, JobSetupError) as exc:
        print(f"flink_job: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _uri_list(value: str) -> list[str]:
    uris = [uri.strip() for uri in value.split(",") if uri.strip()]
    bad = [uri for uri in uris if "://" not in uri]
    if not uris or bad:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated URIs such as file:///path/connector.jar, got {value!r}"
        )
    return uris


if __name__ == "__main__":
    sys.exit(main())
