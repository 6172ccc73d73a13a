"""The data-access layer: member history in, prediction records out.

Two tables in the keyspace named by ``KEYSPACE``::

    member_history(member_id text PRIMARY KEY, recent_title_ids list<text>,
                   updated_at timestamp)
    predictions(member_id text, model_name text, model_version text,
                ranked_title_ids list<text>, scores list<double>, generated_at timestamp,
                experiment text, cell text, PRIMARY KEY (member_id, model_name))

:class:`KeyspacesStore` talks to Amazon Keyspaces with the Cassandra driver: SigV4 auth, TLS
to ``cassandra.<region>.amazonaws.com:9142``, prepared statements, LOCAL_QUORUM reads and
writes (Keyspaces accepts no other consistency for writes). Reads are awaited on the event
loop; writes come in batches from a background thread, each batch sent
``WRITE_CONCURRENCY`` statements at a time. :class:`InMemoryStore` keeps the same data in
memory for local runs, tests and the benchmark: Keyspaces has no local emulator.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import boto3
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy
from cassandra_sigv4.auth import SigV4AuthProvider

KEYSPACES_PORT = 9142
# Keyspaces speaks native protocol v3 and v4; naming v4 skips the driver's downgrade dance.
PROTOCOL_VERSION = 4
WRITE_TIMEOUT_SECONDS = 2.0
WRITE_CONCURRENCY = 32
HISTORY_CQL = "SELECT recent_title_ids FROM {keyspace}.member_history WHERE member_id = ?"
PREDICTION_CQL = (
    "INSERT INTO {keyspace}.predictions (member_id, model_name, model_version, "
    "ranked_title_ids, scores, generated_at, experiment, cell) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class PredictionRecord:
    """One row of the predictions table: a ranking a model version produced for a member."""

    member_id: str
    model_name: str
    model_version: str
    title_ids: Sequence[str]
    scores: Sequence[float]
    generated_at: datetime
    experiment: str | None
    cell: str | None


class MemberStore(Protocol):
    """Where member history comes from and prediction records go."""

    async def recent_title_ids(self, member_id: str) -> list[str]:
        """Titles the member saw recently; empty when the store has no row for them."""
        ...

    def write_predictions(self, records: Sequence[PredictionRecord]) -> list[PredictionRecord]:
        """Write the records and return those that failed; blocks, so it runs on a thread."""
        ...

    def close(self) -> None:
        """Release connections; called once at shutdown."""
        ...


class KeyspacesStore:
    """:class:`MemberStore` on a Cassandra driver session connected to Keyspaces."""

    def __init__(self, session: Any, *, keyspace: str, read_timeout: float) -> None:
        self._session = session
        self._read_timeout = read_timeout
        self._history = _prepare(session, HISTORY_CQL.format(keyspace=keyspace))
        self._insert = _prepare(session, PREDICTION_CQL.format(keyspace=keyspace))

    async def recent_title_ids(self, member_id: str) -> list[str]:
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()
        response = self._session.execute_async(
            self._history, (member_id,), timeout=self._read_timeout
        )
        # The driver calls back on its own I/O thread; the result crosses to the event loop.
        response.add_callbacks(
            callback=_resolve,
            callback_args=(loop, result),
            errback=_fail,
            errback_args=(loop, result),
        )
        rows = await result
        return list(rows[0].recent_title_ids or ()) if rows else []

    def write_predictions(self, records: Sequence[PredictionRecord]) -> list[PredictionRecord]:
        failed = []
        for start in range(0, len(records), WRITE_CONCURRENCY):
            chunk = records[start : start + WRITE_CONCURRENCY]
            responses = [
                self._session.execute_async(
                    self._insert, _prediction_values(record), timeout=WRITE_TIMEOUT_SECONDS
                )
                for record in chunk
            ]
            for record, response in zip(chunk, responses, strict=True):
                try:
                    response.result()
                # The driver raises many types (timeouts, unavailable, overloaded); the record
                # is lost whichever it is, and the caller counts it.
                except Exception:
                    failed.append(record)
        return failed

    def close(self) -> None:
        self._session.cluster.shutdown()


class InMemoryStore:
    """:class:`MemberStore` in memory: histories in a dict, records appended to a list."""

    def __init__(self, histories: Mapping[str, Sequence[str]] | None = None) -> None:
        self.histories = {member: list(titles) for member, titles in (histories or {}).items()}
        self.predictions: list[PredictionRecord] = []
        self._lock = threading.Lock()

    async def recent_title_ids(self, member_id: str) -> list[str]:
        return list(self.histories.get(member_id, ()))

    def write_predictions(self, records: Sequence[PredictionRecord]) -> list[PredictionRecord]:
        with self._lock:
            self.predictions.extend(records)
        return []

    def close(self) -> None:
        """Nothing to release."""


def cluster_options(region: str) -> dict[str, Any]:
    """Return the ``Cluster`` keyword arguments for Keyspaces in ``region``."""
    # The system trust store holds the Amazon and Starfield roots Keyspaces' certificates
    # chain to. Host names are not checked, as in AWS's driver guides: the driver reaches
    # Keyspaces' peers by IP address, which the certificates do not name.
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_REQUIRED
    return {
        "contact_points": [f"cassandra.{region}.amazonaws.com"],
        "port": KEYSPACES_PORT,
        "ssl_context": tls,
        "auth_provider": SigV4AuthProvider(boto3.Session(region_name=region)),
        "protocol_version": PROTOCOL_VERSION,
        "execution_profiles": {
            # Each Keyspaces region is one data center named after the region.
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=region)
            )
        },
    }


def connect_keyspaces(*, region: str, keyspace: str, read_timeout: float) -> KeyspacesStore:
    """Connect to Keyspaces and prepare the statements; raises when Keyspaces is unreachable."""
    cluster = Cluster(**cluster_options(region))
    try:
        return KeyspacesStore(cluster.connect(), keyspace=keyspace, read_timeout=read_timeout)
    except Exception:
        cluster.shutdown()
        raise


def _prediction_values(record: PredictionRecord) -> tuple:
    return (
        record.member_id,
        record.model_name,
        record.model_version,
        list(record.title_ids),
        list(record.scores),
        record.generated_at,
        record.experiment,
        record.cell,
    )


def _prepare(session: Any, cql: str) -> Any:
    statement = session.prepare(cql)
    statement.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    return statement


def _resolve(rows: Any, loop: asyncio.AbstractEventLoop, result: asyncio.Future) -> None:
    loop.call_soon_threadsafe(_settle, result, rows, None)


def _fail(error: BaseException, loop: asyncio.AbstractEventLoop, result: asyncio.Future) -> None:
    loop.call_soon_threadsafe(_settle, result, None, error)


def _settle(result: asyncio.Future, rows: Any, error: BaseException | None) -> None:
    # A read that timed out was cancelled by its caller; its late answer is dropped.
    if result.done():
        return
    if error is None:
        result.set_result(rows)
    else:
        result.set_exception(error)
