"""Validation and routing of raw member-interaction messages, independent of Flink.

:class:`EventProcessor` turns one raw Kafka message value into a :class:`RoutedRecord`: either
the validated event, placed under the hourly raw-zone partition of its ``event_time``, or a
dead-letter record carrying a specific reason, the original payload and the time it was
received, placed under the ingest-date partition of the dead-letter prefix. Processing never
raises on bad input, has no side effects and reads the current time only through an injected
clock, so the same message and clock always give the same result.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.validation import ValidationError, validate

from jobs.layout import DEAD_LETTER_PREFIX, RAW_EVENTS_PREFIX

SCHEMA_FILENAME = "member_interaction_event.avsc"
DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=5)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COUNTRY_CODE = re.compile(r"[A-Z]{2}")
_NON_EMPTY_FIELDS = ("member_id", "title_id", "device_type")
_JSON_TYPE_NAMES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}
_INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


def default_schema_path() -> Path:
    """Return where the event schema is found when no path is given.

    A copy shipped next to this module (how the job is packaged on EMR) wins over the
    repository's ``schemas/avro`` copy used when running from a checkout.
    """
    shipped = Path(__file__).with_name(SCHEMA_FILENAME)
    if shipped.is_file():
        return shipped
    return Path(__file__).resolve().parents[2] / "schemas" / "avro" / SCHEMA_FILENAME


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """Read and parse the Avro schema at ``path`` (or :func:`default_schema_path`).

    Raises ``FileNotFoundError`` naming the path when the file is missing, and fastavro's
    ``SchemaParseException`` when the file is not a valid Avro schema.
    """
    schema_path = Path(path) if path is not None else default_schema_path()
    if not schema_path.is_file():
        raise FileNotFoundError(f"Avro schema file not found: {schema_path}")
    with schema_path.open(encoding="utf-8") as handle:
        return parse_schema(json.load(handle))


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class RoutedRecord:
    """Outcome of processing one message.

    ``partition_path`` is relative to the raw bucket and ends with ``/``; ``partition`` holds
    the same Hive-style partition values as ordered ``(column, value)`` pairs; ``payload`` is
    the JSON object to write.
    """

    is_valid: bool
    partition_path: str
    partition: tuple[tuple[str, str], ...]
    payload: dict[str, Any]

    def to_json_line(self) -> str:
        """Serialise ``payload`` as one compact JSON line without a trailing newline."""
        return json.dumps(self.payload, ensure_ascii=False, separators=(",", ":"))


class InvalidEventError(ValueError):
    """Raised internally with the dead-letter reason of a message that fails validation."""


class EventProcessor:
    """Validate raw messages against the event schema and route them to raw-zone partitions.

    ``schema`` is a schema parsed by :func:`load_schema`. ``clock`` returns the aware datetime
    used as ``received_at`` and as the reference for the future-skew rule; events whose
    ``event_time`` lies more than ``max_future_skew`` after it are rejected.
    """

    def __init__(
        self,
        schema: Mapping[str, Any],
        *,
        clock: Callable[[], datetime] = utc_now,
        max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
    ) -> None:
        if max_future_skew < timedelta(0):
            raise ValueError(f"max_future_skew must not be negative, got {max_future_skew}")
        self._schema = schema
        self._fields = {field["name"]: field for field in schema["fields"]}
        self._required = [name for name, field in self._fields.items() if "default" not in field]
        self._clock = clock
        self._max_skew_ms = int(max_future_skew / timedelta(milliseconds=1))

    def process(self, raw: bytes | str) -> RoutedRecord:
        """Validate one message value and return where and what to write for it."""
        received_at = self._clock()
        if received_at.tzinfo is None:
            raise ValueError("clock must return a timezone-aware datetime")
        received_at = received_at.astimezone(UTC)
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            return self._dead_letter(
                f"not UTF-8: {exc.reason} at byte {exc.start}", raw, received_at
            )
        try:
            event = self._validate(text, received_at)
        except InvalidEventError as exc:
            return self._dead_letter(str(exc), raw, received_at)
        event_time = _EPOCH + timedelta(milliseconds=event["event_time"])
        partition = (
            ("event_date", event_time.strftime("%Y-%m-%d")),
            ("event_hour", event_time.strftime("%H")),
        )
        return RoutedRecord(True, _partition_path(RAW_EVENTS_PREFIX, partition), partition, event)

    def _validate(self, text: str, received_at: datetime) -> dict[str, Any]:
        try:
            decoded = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as exc:
            raise InvalidEventError(
                f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        if not isinstance(decoded, dict):
            raise InvalidEventError(f"not a JSON object: got {_json_type(decoded)}")
        for name in self._required:
            if name not in decoded:
                raise InvalidEventError(f"missing field {name}")
        unexpected = sorted(set(decoded) - set(self._fields))
        if unexpected:
            raise InvalidEventError(f"unexpected field {unexpected[0]}")
        # Emit fields in schema order with defaults filled in, so output lines are uniform.
        event = {
            name: decoded.get(name, field.get("default")) for name, field in self._fields.items()
        }
        try:
            validate(event, self._schema, strict=True)
        except ValidationError as exc:
            raise InvalidEventError(self._describe_schema_violation(exc, event)) from None
        self._check_semantics(event, received_at)
        return event

    def _describe_schema_violation(self, exc: ValidationError, event: Mapping[str, Any]) -> str:
        record_prefix = f"{self._schema['name']}."
        failing_path = exc.errors[0].field
        name = failing_path.removeprefix(record_prefix).split(".", 1)[0]
        field = self._fields[name]
        value = event[name]
        avro_type = field["type"]
        if value is None:
            return f"null value for required field {name}"
        if (
            isinstance(avro_type, dict)
            and avro_type.get("type") == "enum"
            and isinstance(value, str)
        ):
            return f"unknown {name} {value!r}"
        bounds = [_INT_RANGES[t] for t in _primitive_names(avro_type) if t in _INT_RANGES]
        if isinstance(value, int) and not isinstance(value, bool) and bounds:
            return f"value {value} out of range for field {name} ({_describe_type(avro_type)})"
        return (
            f"wrong type for field {name}: expected {_describe_type(avro_type)}, "
            f"got {_json_type(value)}"
        )

    def _check_semantics(self, event: Mapping[str, Any], received_at: datetime) -> None:
        try:
            uuid.UUID(event["event_id"])
        except ValueError:
            raise InvalidEventError(f"event_id is not a UUID: {event['event_id']!r}") from None
        for name in _NON_EMPTY_FIELDS:
            if not event[name].strip():
                raise InvalidEventError(f"empty value for field {name}")
        if not _COUNTRY_CODE.fullmatch(event["country"]):
            raise InvalidEventError(
                f"country is not an ISO 3166-1 alpha-2 code: {event['country']!r}"
            )
        watch_seconds = event["watch_seconds"]
        if watch_seconds is not None and watch_seconds < 0:
            raise InvalidEventError(f"negative watch_seconds: {watch_seconds}")
        event_time = event["event_time"]
        if event_time < 0:
            raise InvalidEventError(f"event_time is before the Unix epoch: {event_time}")
        ahead_ms = event_time - _epoch_millis(received_at)
        if ahead_ms > self._max_skew_ms:
            raise InvalidEventError(
                f"event_time is {ahead_ms} ms ahead of received_at "
                f"(max allowed skew {self._max_skew_ms} ms)"
            )

    @staticmethod
    def _dead_letter(reason: str, raw: bytes | str, received_at: datetime) -> RoutedRecord:
        if isinstance(raw, str):
            raw_text, encoding = raw, "utf-8"
        else:
            try:
                raw_text, encoding = raw.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                raw_text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
        partition = (("ingest_date", received_at.strftime("%Y-%m-%d")),)
        payload = {
            "reason": reason,
            "raw": raw_text,
            "raw_encoding": encoding,
            "received_at": received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        return RoutedRecord(
            False, _partition_path(DEAD_LETTER_PREFIX, partition), partition, payload
        )


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidEventError(f"duplicate JSON key {key}")
        result[key] = value
    return result


def _partition_path(prefix: str, partition: tuple[tuple[str, str], ...]) -> str:
    return "/".join([prefix, *(f"{column}={value}" for column, value in partition)]) + "/"


def _epoch_millis(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _primitive_names(avro_type: Any) -> list[str]:
    if isinstance(avro_type, list):
        return [name for branch in avro_type for name in _primitive_names(branch)]
    if isinstance(avro_type, dict):
        return [avro_type["type"]] if isinstance(avro_type["type"], str) else []
    return [avro_type]


def _describe_type(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " or ".join(_describe_type(branch) for branch in avro_type)
    if isinstance(avro_type, dict):
        if avro_type["type"] == "enum":
            return f"enum {avro_type['name'].rsplit('.', 1)[-1]}"
        if "logicalType" in avro_type:
            return f"{avro_type['type']} ({avro_type['logicalType']})"
        return str(avro_type["type"])
    return str(avro_type)
