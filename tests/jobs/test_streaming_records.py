"""Tests for jobs.streaming.records: validation, reasons and routing of raw messages."""

from __future__ import annotations

import ast
import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs.streaming import records
from jobs.streaming.records import EventProcessor, default_schema_path, load_schema

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
EVENT_ID = "6f1c3a4e-2b7d-4e8f-9a0b-1c2d3e4f5a6b"


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def make_event(**overrides: object) -> dict:
    event = {
        "event_id": EVENT_ID,
        "member_id": "member-1",
        "title_id": "title-42",
        "event_type": "PLAY",
        "event_time": millis(datetime(2024, 5, 10, 11, 30, tzinfo=UTC)),
        "watch_seconds": 1260,
        "device_type": "tv",
        "country": "US",
    }
    event.update(overrides)
    return event


def without(field: str) -> dict:
    event = make_event()
    del event[field]
    return event


@pytest.fixture
def processor(event_schema: dict) -> EventProcessor:
    return EventProcessor(event_schema, clock=lambda: NOW)


def process_event(processor: EventProcessor, event: dict) -> records.RoutedRecord:
    return processor.process(json.dumps(event).encode("utf-8"))


def test_default_schema_path_is_repository_copy(schema_path: Path) -> None:
    assert default_schema_path() == schema_path


def test_load_schema_reports_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.avsc"
    with pytest.raises(FileNotFoundError, match=f"Avro schema file not found: {missing}"):
        load_schema(missing)


def test_load_schema_accepts_explicit_path(tmp_path: Path, schema_path: Path) -> None:
    shipped = tmp_path / "member_interaction_event.avsc"
    shipped.write_text(schema_path.read_text(encoding="utf-8"), encoding="utf-8")
    schema = load_schema(str(shipped))
    assert schema["name"] == "com.mlplatform.events.MemberInteractionEvent"
    assert [f["name"] for f in schema["fields"]] == [
        "event_id",
        "member_id",
        "title_id",
        "event_type",
        "event_time",
        "watch_seconds",
        "device_type",
        "country",
    ]


def test_valid_event_is_routed_to_its_hour_partition(processor: EventProcessor) -> None:
    routed = process_event(processor, make_event())

    assert routed.is_valid
    assert routed.partition_path == (
        "streaming/member_interactions/event_date=2024-05-10/event_hour=11/"
    )
    assert routed.partition == (("event_date", "2024-05-10"), ("event_hour", "11"))
    assert routed.payload == make_event()
    assert routed.to_json_line() == (
        '{"event_id":"6f1c3a4e-2b7d-4e8f-9a0b-1c2d3e4f5a6b","member_id":"member-1",'
        '"title_id":"title-42","event_type":"PLAY","event_time":1715340600000,'
        '"watch_seconds":1260,"device_type":"tv","country":"US"}'
    )


@pytest.mark.parametrize(
    ("event_time", "expected_path"),
    [
        (
            datetime(2024, 5, 9, 23, 59, 59, 999000, tzinfo=UTC),
            "streaming/member_interactions/event_date=2024-05-09/event_hour=23/",
        ),
        (
            datetime(2024, 5, 10, 0, 0, tzinfo=UTC),
            "streaming/member_interactions/event_date=2024-05-10/event_hour=00/",
        ),
        (
            # 01:30 in UTC+02:00 is still the previous UTC day.
            datetime(2024, 5, 10, 1, 30, tzinfo=timezone(timedelta(hours=2))),
            "streaming/member_interactions/event_date=2024-05-09/event_hour=23/",
        ),
    ],
)
def test_partition_is_computed_in_utc(
    processor: EventProcessor, event_time: datetime, expected_path: str
) -> None:
    routed = process_event(processor, make_event(event_time=millis(event_time)))
    assert routed.is_valid
    assert routed.partition_path == expected_path


def test_missing_watch_seconds_defaults_to_null(processor: EventProcessor) -> None:
    routed = process_event(processor, without("watch_seconds"))
    assert routed.is_valid
    assert routed.payload["watch_seconds"] is None
    assert list(routed.payload) == list(make_event())


def test_str_input_is_accepted(processor: EventProcessor) -> None:
    assert processor.process(json.dumps(make_event())).is_valid


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (
            b"{not json",
            "not JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        (b"", "not JSON: Expecting value at line 1 column 1"),
        (b"[1, 2]", "not a JSON object: got array"),
        (b'"PLAY"', "not a JSON object: got string"),
        (b'{"event_id": "a", "event_id": "b"}', "duplicate JSON key event_id"),
    ],
)
def test_unparseable_messages_get_specific_reasons(
    processor: EventProcessor, raw: bytes, reason: str
) -> None:
    routed = processor.process(raw)
    assert not routed.is_valid
    assert routed.payload["reason"] == reason
    assert routed.payload["raw"] == raw.decode("utf-8")
    assert routed.payload["raw_encoding"] == "utf-8"


@pytest.mark.parametrize(
    "field",
    ["event_id", "member_id", "title_id", "event_type", "event_time", "device_type", "country"],
)
def test_missing_required_field(processor: EventProcessor, field: str) -> None:
    routed = process_event(processor, without(field))
    assert not routed.is_valid
    assert routed.payload["reason"] == f"missing field {field}"


def test_first_missing_field_in_schema_order_is_reported(processor: EventProcessor) -> None:
    event = without("country")
    del event["title_id"]
    assert process_event(processor, event).payload["reason"] == "missing field title_id"


def test_unexpected_field_is_rejected(processor: EventProcessor) -> None:
    routed = process_event(processor, make_event(session_id="s-1", app_version="9"))
    assert routed.payload["reason"] == "unexpected field app_version"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"member_id": 42}, "wrong type for field member_id: expected string, got integer"),
        ({"title_id": ["t"]}, "wrong type for field title_id: expected string, got array"),
        (
            {"event_time": "2024-05-10T11:30:00Z"},
            "wrong type for field event_time: expected long (timestamp-millis), got string",
        ),
        (
            {"event_time": 1715340600000.5},
            "wrong type for field event_time: expected long (timestamp-millis), got number",
        ),
        (
            {"watch_seconds": "60"},
            "wrong type for field watch_seconds: expected null or int, got string",
        ),
        (
            {"watch_seconds": True},
            "wrong type for field watch_seconds: expected null or int, got boolean",
        ),
        (
            {"watch_seconds": 2**31},
            "value 2147483648 out of range for field watch_seconds (null or int)",
        ),
        (
            {"event_type": 3},
            "wrong type for field event_type: expected enum InteractionType, got integer",
        ),
        (
            {"device_type": {"kind": "tv"}},
            "wrong type for field device_type: expected string, got object",
        ),
        ({"country": None}, "null value for required field country"),
        ({"event_id": None}, "null value for required field event_id"),
    ],
)
def test_wrong_types_name_field_and_types(
    processor: EventProcessor, overrides: dict, reason: str
) -> None:
    routed = process_event(processor, make_event(**overrides))
    assert not routed.is_valid
    assert routed.payload["reason"] == reason


@pytest.mark.parametrize("event_type", ["PAUSE", "play", ""])
def test_unknown_event_type(processor: EventProcessor, event_type: str) -> None:
    routed = process_event(processor, make_event(event_type=event_type))
    assert routed.payload["reason"] == f"unknown event_type {event_type!r}"


@pytest.mark.parametrize(
    "event_type", ["IMPRESSION", "PLAY", "COMPLETE", "THUMBS_UP", "THUMBS_DOWN", "ADD_TO_LIST"]
)
def test_every_schema_event_type_is_accepted(processor: EventProcessor, event_type: str) -> None:
    assert process_event(processor, make_event(event_type=event_type)).is_valid


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"event_id": "not-a-uuid"}, "event_id is not a UUID: 'not-a-uuid'"),
        ({"member_id": "  "}, "empty value for field member_id"),
        ({"title_id": ""}, "empty value for field title_id"),
        ({"device_type": ""}, "empty value for field device_type"),
        ({"country": "us"}, "country is not an ISO 3166-1 alpha-2 code: 'us'"),
        ({"country": "USA"}, "country is not an ISO 3166-1 alpha-2 code: 'USA'"),
        ({"country": "U1"}, "country is not an ISO 3166-1 alpha-2 code: 'U1'"),
        ({"watch_seconds": -1}, "negative watch_seconds: -1"),
        ({"event_time": -1}, "event_time is before the Unix epoch: -1"),
    ],
)
def test_semantic_checks(processor: EventProcessor, overrides: dict, reason: str) -> None:
    routed = process_event(processor, make_event(**overrides))
    assert not routed.is_valid
    assert routed.payload["reason"] == reason


def test_zero_watch_seconds_is_valid(processor: EventProcessor) -> None:
    assert process_event(processor, make_event(watch_seconds=0)).is_valid


def test_event_at_the_skew_limit_is_accepted(processor: EventProcessor) -> None:
    at_limit = NOW + records.DEFAULT_MAX_FUTURE_SKEW
    routed = process_event(processor, make_event(event_time=millis(at_limit)))
    assert routed.is_valid
    assert routed.partition_path == (
        "streaming/member_interactions/event_date=2024-05-10/event_hour=12/"
    )


def test_event_beyond_the_skew_limit_is_rejected(processor: EventProcessor) -> None:
    too_late = millis(NOW + records.DEFAULT_MAX_FUTURE_SKEW) + 1
    routed = process_event(processor, make_event(event_time=too_late))
    assert not routed.is_valid
    assert routed.payload["reason"] == (
        "event_time is 300001 ms ahead of received_at (max allowed skew 300000 ms)"
    )


def test_future_skew_is_configurable(event_schema: dict) -> None:
    strict = EventProcessor(event_schema, clock=lambda: NOW, max_future_skew=timedelta(0))
    assert process_event(strict, make_event(event_time=millis(NOW))).is_valid
    routed = process_event(strict, make_event(event_time=millis(NOW) + 1))
    assert routed.payload["reason"] == (
        "event_time is 1 ms ahead of received_at (max allowed skew 0 ms)"
    )


def test_negative_skew_is_refused(event_schema: dict) -> None:
    with pytest.raises(ValueError, match="max_future_skew must not be negative"):
        EventProcessor(event_schema, max_future_skew=timedelta(seconds=-1))


def test_non_utf8_message_is_dead_lettered_as_base64(processor: EventProcessor) -> None:
    raw = b'{"event_id": "\xff\xfe"}'
    routed = processor.process(raw)

    assert not routed.is_valid
    assert routed.partition_path == (
        "streaming/_dead_letter/member_interactions/ingest_date=2024-05-10/"
    )
    assert routed.partition == (("ingest_date", "2024-05-10"),)
    assert routed.payload == {
        "reason": "not UTF-8: invalid start byte at byte 14",
        "raw": base64.b64encode(raw).decode("ascii"),
        "raw_encoding": "base64",
        "received_at": "2024-05-10T12:00:00.000Z",
    }
    assert base64.b64decode(routed.payload["raw"]) == raw


def test_dead_letter_line_keeps_original_text(processor: EventProcessor) -> None:
    routed = processor.process('{"note": "caf\u00e9"}')
    assert routed.to_json_line() == (
        '{"reason":"missing field event_id","raw":"{\\"note\\": \\"caf\u00e9\\"}",'
        '"raw_encoding":"utf-8","received_at":"2024-05-10T12:00:00.000Z"}'
    )


def test_dead_letter_partition_uses_utc_receive_date(event_schema: dict) -> None:
    evening_in_sao_paulo = datetime(2024, 5, 10, 22, 30, 15, 250000, timezone(timedelta(hours=-3)))
    processor = EventProcessor(event_schema, clock=lambda: evening_in_sao_paulo)
    routed = processor.process(b"oops")
    assert routed.partition_path == (
        "streaming/_dead_letter/member_interactions/ingest_date=2024-05-11/"
    )
    assert routed.payload["received_at"] == "2024-05-11T01:30:15.250Z"


def test_future_skew_uses_the_injected_clock(event_schema: dict) -> None:
    event = make_event(event_time=millis(datetime(2030, 1, 1, tzinfo=UTC)))
    later = EventProcessor(event_schema, clock=lambda: datetime(2030, 1, 1, tzinfo=UTC))
    assert process_event(later, event).is_valid
    assert not process_event(EventProcessor(event_schema, clock=lambda: NOW), event).is_valid


def test_naive_clock_is_refused(event_schema: dict) -> None:
    processor = EventProcessor(event_schema, clock=lambda: datetime(2024, 5, 10, 12))
    with pytest.raises(ValueError, match="timezone-aware"):
        processor.process(b"{}")


def test_processing_is_deterministic(processor: EventProcessor) -> None:
    for raw in (json.dumps(make_event()).encode(), b"\x80", b"{}"):
        assert processor.process(raw) == processor.process(raw)


def test_records_module_does_not_import_pyflink() -> None:
    tree = ast.parse(Path(records.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not [name for name in imported if name.split(".")[0] == "pyflink"]
    assert "fastavro" in imported
