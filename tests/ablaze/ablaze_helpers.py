"""Shared by the ABlaze tests: the tables' schema, a valid experiment and a settable clock."""

from __future__ import annotations

import contextlib
import copy
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

REPO_ROOT = Path(__file__).resolve().parents[2]
# The service is a folder of the checkout, not an installed package, so the tests import it
# from there whichever directory pytest started in.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ablaze.allocation import AllocatedCell, AllocatedExperiment, Eligibility  # noqa: E402
from ablaze.results import CellObservations, Observations, ObservationWindow  # noqa: E402
from ablaze.settings import Settings  # noqa: E402
from ablaze.statistics import Sample  # noqa: E402
from ablaze.store import ResultStore  # noqa: E402

EXPERIMENTS_TABLE = "ablaze-experiments"
RESULTS_TABLE = "ablaze-results"
REGION = "us-east-1"
KNOWN_VERSIONS = frozenset({"7", "8", "9"})
START = datetime(2030, 1, 1, tzinfo=UTC)
END = START + timedelta(days=14)
# When the tests' analysis job ran, three days into the window.
COMPUTED_AT = START + timedelta(days=3)
# Before the window: experiments can be created and started.
BEFORE_START = START - timedelta(days=1)
SPEC: dict[str, Any] = {
    "id": "homepage-ranker",
    "description": "Does the new ranker lift plays on the homepage row?",
    "surface": "homepage-row",
    "cells": [
        {"name": "control", "percent": 10, "model_version": "7", "control": True},
        {"name": "treatment", "percent": 10, "model_version": "8"},
    ],
    "start": "2030-01-01T00:00:00Z",
    "end": "2030-01-15T00:00:00Z",
    "primary_metric": "play_rate",
    "guardrail_metrics": ["completion_rate", "plays_per_member"],
}
SETTINGS = Settings(
    experiments_table=EXPERIMENTS_TABLE,
    results_table=RESULTS_TABLE,
    aws_region=REGION,
    model_package_group="title-recommender",
)


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid experiment request with ``overrides`` applied."""
    return {**copy.deepcopy(SPEC), **overrides}


def create_tables(client: Any) -> None:
    """The two tables as store.py's docstring describes them (and the stack creates them)."""
    client.create_table(
        TableName=EXPERIMENTS_TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "experiment_id", "KeyType": "HASH"}],
        AttributeDefinitions=[
            {"AttributeName": "experiment_id", "AttributeType": "S"},
            {"AttributeName": "surface", "AttributeType": "S"},
            {"AttributeName": "state", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "surface-state",
                "KeySchema": [
                    {"AttributeName": "surface", "KeyType": "HASH"},
                    {"AttributeName": "state", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    client.create_table(
        TableName=RESULTS_TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[
            {"AttributeName": "experiment_id", "KeyType": "HASH"},
            {"AttributeName": "computed_at", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "experiment_id", "AttributeType": "S"},
            {"AttributeName": "computed_at", "AttributeType": "S"},
        ],
    )


class Clock:
    """The time the app sees; tests move it."""

    def __init__(self, now: datetime = BEFORE_START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def allocated(
    *,
    experiment_id: str = "exp",
    salt: str = "0123456789abcdef0123456789abcdef",
    cells: dict[str, tuple[tuple[int, int], ...]],
    eligibility: Eligibility | None = None,
    start: float = 0.0,
    end: float = float("inf"),
) -> AllocatedExperiment:
    """An allocated experiment whose cell ``name`` is served by model version ``name``."""
    return AllocatedExperiment(
        experiment_id=experiment_id,
        salt=salt,
        cells=tuple(
            AllocatedCell(name=name, model_version=name, ranges=ranges)
            for name, ranges in cells.items()
        ),
        eligibility=eligibility or Eligibility(),
        start=start,
        end=end,
    )


def observations(members: int, play_successes: int, *, plays_mean: float = 2.0) -> CellObservations:
    """A cell's observations of the three catalogue metrics."""
    return CellObservations(
        members=members,
        metrics={
            "play_rate": Sample.of_counts(n=members, successes=play_successes),
            "completion_rate": Sample.of_counts(n=members, successes=members // 4),
            "plays_per_member": Sample(n=members, mean=plays_mean, variance=4.0),
        },
    )


def write_observations(
    results: ResultStore,
    cells: dict[str, CellObservations],
    *,
    experiment_id: str = "homepage-ranker",
    computed_at: datetime = COMPUTED_AT,
    cell_conflicts: int = 0,
) -> None:
    """Store a run of the analysis job over the window from START to ``computed_at``."""
    observations = Observations(
        cells=cells,
        cell_conflicts=cell_conflicts,
        window=ObservationWindow(start=START, end=computed_at),
    )
    results.put(experiment_id, observations, computed_at=computed_at)


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """Serve ``app`` with uvicorn on a free loopback port and yield the port.

    The socket listens before the server starts, so a client can connect at once: the
    connection waits in the backlog until uvicorn accepts it.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="uvicorn")
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
