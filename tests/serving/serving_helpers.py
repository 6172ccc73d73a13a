"""Shared by the serving tests: tiny real model folders, store doubles and a running app.

The model folders are written with the training code's own ``artifact.save``, from
hand-set vectors whose rankings the tests can work out by eye:

=======  ======================  ==========================================
member   vector                  primary ranking (all six titles)
=======  ======================  ==========================================
m0       (1, 0)                  t0 .9, t4 .7, t1 .5, t5 .2, t3 .1, t2 0
m1       (0, 1)                  t2 .9, t5 .7, t1 .5, t4 .2, t3 .1, t0 0
=======  ======================  ==========================================

Popularity (training positives): t1 9, t3 9, t0 5, t5 4, t2 2, t4 0, so the baseline order is
t1, t3 (tie, lower row first), t0, t5, t2, t4. The candidate model swaps the members' vectors.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

REPO_ROOT = Path(__file__).resolve().parents[2]
# The app and the training code it loads models with are folders of the checkout, not
# installed packages, so the tests import them from it whichever directory pytest started in.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from serving.recommender_service import service as service_module  # noqa: E402
from serving.recommender_service.experiments import Assignment  # noqa: E402
from serving.recommender_service.store import InMemoryStore, PredictionRecord  # noqa: E402
from training.recommender import artifact  # noqa: E402
from training.recommender.model import MatrixFactorization  # noqa: E402

MEMBERS = ["m0", "m1", "m2", "m3"]
TITLES = ["t0", "t1", "t2", "t3", "t4", "t5"]
MEMBER_VECTORS = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]
TITLE_VECTORS = [[0.9, 0.0], [0.5, 0.5], [0.0, 0.9], [0.1, 0.1], [0.7, 0.2], [0.2, 0.7]]
TITLE_POSITIVES = [5, 9, 2, 9, 0, 4]
PRIMARY_RANKING = {
    "m0": ["t0", "t4", "t1", "t5", "t3", "t2"],
    "m1": ["t2", "t5", "t1", "t4", "t3", "t0"],
}
POPULARITY_RANKING = ["t1", "t3", "t0", "t5", "t2", "t4"]
# m0 saw its best title; "newcomer" is unknown to the model but has a history, which holds a
# title the catalog no longer has.
HISTORIES = {"m0": ["t0"], "newcomer": ["t1", "t-retired"]}
PRIMARY_METRICS = {"k": 10, "recall_at_k": 0.25, "ndcg_at_k": 0.125}
BASE_ENVIRONMENT = {
    "MODEL_NAME": "title-recommender",
    "MODEL_VERSION": "7",
    "MODEL_TRAINING_DATE": "2024-05-10",
    "AWS_REGION": "us-east-1",
}
LOAD_TIMEOUT_SECONDS = 10.0


def tiny_model(member_vectors: list[list[float]]) -> MatrixFactorization:
    """The 4-member, 6-title model of the module docstring with the given member vectors."""
    model = MatrixFactorization(len(MEMBERS), len(TITLES), 2, torch.Generator())
    model.load_state_dict(
        {
            "member_embedding.weight": torch.tensor(member_vectors),
            "title_embedding.weight": torch.tensor(TITLE_VECTORS),
            "title_bias.weight": torch.zeros(len(TITLES), 1),
        }
    )
    return model


def save_tiny_model(model_dir: Path, member_vectors: list[list[float]]) -> Path:
    artifact.save(
        model_dir,
        model=tiny_model(member_vectors),
        member_ids=MEMBERS,
        title_ids=TITLES,
        title_positives=TITLE_POSITIVES,
        metrics=PRIMARY_METRICS,
    )
    return model_dir


class SlowStore(InMemoryStore):
    """A store whose reads take ``delay`` seconds, or raise ``error`` when one is given."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.delay = delay
        self.error = error

    async def recent_title_ids(self, member_id: str) -> list[str]:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return await super().recent_title_ids(member_id)


class GatedStore(InMemoryStore):
    """A store whose writes wait until ``release`` is set, to fill the writer's queue."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = threading.Event()

    def write_predictions(self, records: Sequence[PredictionRecord]) -> list[PredictionRecord]:
        self.release.wait(LOAD_TIMEOUT_SECONDS)
        return super().write_predictions(records)


@dataclass
class FixedAssigner:
    """A cell assigner with a fixed answer per member; it counts its starts and stops."""

    assignments: Mapping[str, Assignment] = field(default_factory=dict)
    starts: int = 0
    stops: int = 0

    def start(self) -> None:
        self.starts += 1

    def assign(self, member_id: str) -> Assignment | None:
        return self.assignments.get(member_id)

    def stop(self) -> None:
        self.stops += 1


@dataclass
class RunningApp:
    """An app after start-up, with its client, store and metric output."""

    app: FastAPI
    client: TestClient
    store: InMemoryStore | None
    metrics_output: io.StringIO

    @property
    def service(self) -> service_module.RecommenderService:
        return self.app.state.service

    def recommend(self, member_id: str, k: int | None = None) -> dict:
        body: dict[str, Any] = {"member_id": member_id}
        if k is not None:
            body["k"] = k
        response = self.client.post("/recommendations", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def drain(self) -> None:
        """Stop the service's workers, so every queued job has run and its metrics flushed."""
        self.service.stop()

    def emf_documents(self) -> list[dict]:
        self.service.metrics.flush()
        return [json.loads(line) for line in self.metrics_output.getvalue().splitlines()]

    def metric_values(self, name: str, **dimensions: str) -> list[float]:
        """Every value of ``name`` written with exactly the given dimension values."""
        values: list[float] = []
        for document in self.emf_documents():
            names = document["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
            if name in document and {key: document[key] for key in names} == dimensions:
                value = document[name]
                values.extend(value if isinstance(value, list) else [value])
        return values


StartApp = Callable[..., RunningApp]
