"""The Keyspaces data-access layer, against a session double that records every call.

Keyspaces has no local emulator, so these tests pin what the layer sends: the exact CQL it
prepares, the consistency level, the values it binds and the timeouts; and how it turns the
driver's callbacks into awaited results.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.policies import DCAwareRoundRobinPolicy
from cassandra_sigv4.auth import SigV4AuthProvider

from serving.recommender_service import store as store_module
from serving.recommender_service.store import (
    KeyspacesStore,
    PredictionRecord,
    cluster_options,
)

if TYPE_CHECKING:
    from serving_helpers import StartApp

HISTORY_CQL = "SELECT recent_title_ids FROM ml_platform_dev.member_history WHERE member_id = ?"
PREDICTION_CQL = (
    "INSERT INTO ml_platform_dev.predictions (member_id, model_name, model_version, "
    "ranked_title_ids, scores, generated_at, experiment, cell) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
Row = namedtuple("Row", ["recent_title_ids"])


@dataclass
class PreparedDouble:
    query_string: str
    consistency_level: int | None = None


@dataclass
class ResponseDouble:
    """A driver ResponseFuture that answers from another thread, as the driver's I/O does."""

    rows: list[Any] | None = None
    error: Exception | None = None
    delay: float = 0.0

    def result(self) -> list[Any] | None:
        if self.error is not None:
            raise self.error
        return self.rows

    def add_callbacks(self, callback, errback, callback_args=(), errback_args=()) -> None:
        def answer() -> None:
            if self.error is not None:
                errback(self.error, *errback_args)
            else:
                callback(self.rows, *callback_args)

        threading.Timer(self.delay, answer).start()


@dataclass
class RecordingSession:
    """Records prepare/execute calls; answers reads with ``histories``."""

    histories: dict[str, list[str] | None] = field(default_factory=dict)
    read_error: Exception | None = None
    read_delay: float = 0.0
    failing_members: set[str] = field(default_factory=set)
    prepared: list[PreparedDouble] = field(default_factory=list)
    calls: list[tuple[str, PreparedDouble, tuple, float]] = field(default_factory=list)
    shut_down: bool = False

    @property
    def cluster(self) -> RecordingSession:
        return self

    def prepare(self, query: str) -> PreparedDouble:
        statement = PreparedDouble(query)
        self.prepared.append(statement)
        return statement

    def execute_async(self, statement, parameters, timeout) -> ResponseDouble:
        self.calls.append(("execute_async", statement, parameters, timeout))
        member_id = parameters[0]
        if statement.query_string.startswith("INSERT"):
            failure = OperationTimedOut("write timed out")
            return ResponseDouble(error=failure if member_id in self.failing_members else None)
        rows = [Row(self.histories[member_id])] if member_id in self.histories else []
        return ResponseDouble(rows=rows, error=self.read_error, delay=self.read_delay)

    def shutdown(self) -> None:
        self.shut_down = True


def keyspaces(session: RecordingSession, read_timeout: float = 0.05) -> KeyspacesStore:
    return KeyspacesStore(session, keyspace="ml_platform_dev", read_timeout=read_timeout)


def test_statements_are_prepared_once_at_local_quorum() -> None:
    session = RecordingSession()
    keyspaces(session)
    assert session.prepared == [
        PreparedDouble(HISTORY_CQL, ConsistencyLevel.LOCAL_QUORUM),
        PreparedDouble(PREDICTION_CQL, ConsistencyLevel.LOCAL_QUORUM),
    ]


def test_history_is_read_with_the_member_id_and_the_timeout() -> None:
    session = RecordingSession(histories={"m0": ["t3", "t1"], "m1": None})
    store = keyspaces(session, read_timeout=0.08)
    assert asyncio.run(store.recent_title_ids("m0")) == ["t3", "t1"]
    # A row whose list is null, and no row at all, are both an empty history.
    assert asyncio.run(store.recent_title_ids("m1")) == []
    assert asyncio.run(store.recent_title_ids("m9")) == []
    history = session.prepared[0]
    assert session.calls == [
        ("execute_async", history, ("m0",), 0.08),
        ("execute_async", history, ("m1",), 0.08),
        ("execute_async", history, ("m9",), 0.08),
    ]


def test_a_failed_read_raises_the_drivers_error() -> None:
    store = keyspaces(RecordingSession(read_error=OperationTimedOut("timed out")))
    with pytest.raises(OperationTimedOut):
        asyncio.run(store.recent_title_ids("m0"))


def test_an_answer_after_the_caller_gave_up_is_dropped() -> None:
    session = RecordingSession(histories={"m0": ["t1"]}, read_delay=0.05)
    store = keyspaces(session)

    async def give_up_then_wait() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await store.recent_title_ids("m0")
        # The driver's late callback lands on a cancelled future and must not raise.
        await asyncio.sleep(0.1)

    asyncio.run(give_up_then_wait())


def record(member_id: str, **changes: Any) -> PredictionRecord:
    values = {
        "member_id": member_id,
        "model_name": "title-recommender",
        "model_version": "7",
        "title_ids": ("t4", "t1"),
        "scores": (0.7, 0.5),
        "generated_at": datetime(2024, 5, 10, 12, 30, tzinfo=UTC),
        "experiment": "exp-1",
        "cell": "control",
    }
    return PredictionRecord(**{**values, **changes})


def test_a_prediction_is_written_with_every_column() -> None:
    session = RecordingSession()
    store = keyspaces(session)
    assert store.write_predictions([record("m0")]) == []
    assert session.calls == [
        (
            "execute_async",
            session.prepared[1],
            (
                "m0",
                "title-recommender",
                "7",
                ["t4", "t1"],
                [0.7, 0.5],
                datetime(2024, 5, 10, 12, 30, tzinfo=UTC),
                "exp-1",
                "control",
            ),
            2.0,
        )
    ]
    store.close()
    assert session.shut_down


def test_a_batch_is_written_in_chunks_and_failures_are_returned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_module, "WRITE_CONCURRENCY", 4)
    session = RecordingSession(failing_members={"m3", "m8"})
    store = keyspaces(session)
    records = [record(f"m{index}", experiment=None, cell=None) for index in range(10)]
    failed = store.write_predictions(records)
    assert [r.member_id for r in failed] == ["m3", "m8"]
    assert [call[2][0] for call in session.calls] == [f"m{index}" for index in range(10)]
    assert all(call[2][6:] == (None, None) for call in session.calls)


def test_cluster_options_reach_keyspaces_over_tls_with_sigv4() -> None:
    options = cluster_options("eu-west-1")
    assert options["contact_points"] == ["cassandra.eu-west-1.amazonaws.com"]
    assert (options["port"], options["protocol_version"]) == (9142, 4)
    tls = options["ssl_context"]
    assert isinstance(tls, ssl.SSLContext)
    assert tls.verify_mode == ssl.CERT_REQUIRED
    assert tls.minimum_version >= ssl.TLSVersion.TLSv1_2
    auth = options["auth_provider"]
    assert isinstance(auth, SigV4AuthProvider)
    assert auth.session.region_name == "eu-west-1"
    policy = options["execution_profiles"][EXEC_PROFILE_DEFAULT].load_balancing_policy
    assert isinstance(policy, DCAwareRoundRobinPolicy)
    assert policy.local_dc == "eu-west-1"


def test_the_app_reads_and_writes_through_the_keyspaces_layer(start_app: StartApp) -> None:
    session = RecordingSession(histories={"m0": ["t0", "t4"]})
    running = start_app(store=keyspaces(session))
    body = running.recommend("m0", k=2)
    assert [item["title_id"] for item in body["items"]] == ["t1", "t5"]
    assert body["fallback"] is None
    running.drain()
    [read, write] = session.calls
    assert read == ("execute_async", session.prepared[0], ("m0",), 0.05)
    assert write[:2] == ("execute_async", session.prepared[1])
    assert write[2][:4] == ("m0", "title-recommender", "7", ["t1", "t5"])
    assert write[2][4] == [item["score"] for item in body["items"]] == pytest.approx([0.5, 0.2])
    assert write[2][6:] == (None, None)
    assert session.shut_down
