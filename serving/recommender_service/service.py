"""What a recommendation request does, and the models, store and workers it uses.

Per request: the member's experiment cell (if any) picks the model version; their recent
titles come from the store within ``STORE_TIMEOUT_MS``; the model ranks the other titles.
The response never waits for anything else: the prediction record (for the predictions
table and, with ``PREDICTION_LOG_URI``, the prediction log), the shadow scoring of the
candidate model and the feature-age read are queued for background threads, and a full
queue drops the item and counts the drop.

Fallbacks, in the response's ``fallback`` field:

- ``popularity``: the model does not know the member, so titles come in order of training
  positives (still without the member's recent titles);
- ``store_timeout``: the store did not answer in time, so seen titles are not excluded;
- ``store_unavailable``: the store failed, is not connected yet, or is not configured.

When a request has both kinds, the response names ``popularity`` and the ``Fallback``
metric counts both.

Experiment cells: a cell served by the primary version is answered as any other request; a
cell served by the loaded candidate is ranked by the candidate (and not shadow-scored as
well). A cell whose version this task does not serve is ranked by the primary version and
counted as ``ExperimentVersionUnavailable``. Either way the answer and its prediction record
name the experiment and cell, with the version that actually ranked: the analysis compares
cells as assigned, and the version shows which answers the cell's model did not give.

Start-up runs on a thread, so the health endpoints answer while the model loads: the primary
model first (its failure is logged once and the service stays not ready), then one attempt
to connect the store, then the cell assigner's start (ABlaze's first load of the running
experiments), then readiness, then the candidate model. A store that could not be connected
is retried in the background with a growing delay.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from serving.recommender_service.background import BackgroundWorker
from serving.recommender_service.experiments import Assignment, CellAssigner
from serving.recommender_service.features import FeatureReader
from serving.recommender_service.logs import LOGGER, one_line
from serving.recommender_service.metrics import Metrics
from serving.recommender_service.model_source import ModelLoadError
from serving.recommender_service.prediction_log import (
    LOG_BATCH_RECORDS,
    LOG_QUEUE_CAPACITY,
    LoggedPrediction,
    PredictionLog,
)
from serving.recommender_service.ranker import Ranker, Ranking
from serving.recommender_service.settings import Settings
from serving.recommender_service.store import MemberStore, PredictionRecord

Fallback = Literal["popularity", "store_timeout", "store_unavailable"]
# Shadow records must not overwrite the served ranking, which has the same primary key
# (member_id, model_name) in the predictions table.
SHADOW_MODEL_NAME_SUFFIX = ":shadow"
QUEUE_CAPACITY = 1000
SHUTDOWN_SECONDS = 5.0
STORE_RETRY_SECONDS = (5.0, 10.0, 30.0, 60.0)

LoadRanker = Callable[[str], Ranker]
StoreFactory = Callable[[Settings], MemberStore | None]


class NotReadyError(Exception):
    """No model is loaded; the message says why."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version and where it was loaded from."""

    version: str
    artifact_uri: str
    ranker: Ranker


@dataclass(frozen=True)
class Recommendation:
    """The answer to one request."""

    member_id: str
    model_name: str
    model_version: str
    title_ids: list[str]
    scores: list[float]
    fallback: Fallback | None
    experiment: str | None
    cell: str | None


@dataclass(frozen=True)
class _ShadowRequest:
    """An answered request the candidate is to rank too, with the history the answer used.

    The history is empty when it could not be read; ``store_fallback`` then says why.
    """

    served: Recommendation
    history: list[str]
    store_fallback: Fallback | None
    k: int


_Item = TypeVar("_Item")


class RecommenderService:
    """Serves one model name: its primary version and, optionally, a candidate version."""

    def __init__(
        self,
        *,
        settings: Settings,
        metrics: Metrics,
        cell_assigner: CellAssigner,
        feature_reader: FeatureReader | None,
        prediction_log: PredictionLog | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.primary: ServedModel | None = None
        self.candidate: ServedModel | None = None
        self.store: MemberStore | None = None
        self.not_ready_reason = "the model is loading"
        self._cell_assigner = cell_assigner
        self._feature_reader = feature_reader
        self._prediction_log = prediction_log
        self._writer: BackgroundWorker[PredictionRecord] = BackgroundWorker(
            name="prediction-writer", capacity=QUEUE_CAPACITY, handle=self._write_records
        )
        self._log_writer: BackgroundWorker[LoggedPrediction] = BackgroundWorker(
            name="prediction-log",
            capacity=LOG_QUEUE_CAPACITY,
            handle=self._write_log,
            interval=settings.prediction_log_flush_seconds,
            max_batch=LOG_BATCH_RECORDS,
        )
        self._shadow: BackgroundWorker[_ShadowRequest] = BackgroundWorker(
            name="shadow-scorer", capacity=QUEUE_CAPACITY, handle=self._score_candidate
        )
        self._features: BackgroundWorker[str] = BackgroundWorker(
            name="feature-reader", capacity=QUEUE_CAPACITY, handle=self._read_feature_ages
        )
        self._loaded = threading.Event()
        self._stopping = threading.Event()
        self._loader: threading.Thread | None = None

    # Start-up and shutdown.

    def start(self, *, load_ranker: LoadRanker, store_factory: StoreFactory) -> None:
        """Start the workers and the loading thread; returns at once."""
        for worker in self._workers():
            worker.start()
        self._loader = threading.Thread(
            target=self._load, args=(load_ranker, store_factory), name="loader", daemon=True
        )
        self._loader.start()

    def wait_until_loaded(self, timeout: float) -> bool:
        """Wait until the models are loaded or have failed, and the store was tried once."""
        return self._loaded.wait(timeout)

    def stop(self) -> None:
        """Stop the cell assigner, finish the queued jobs within the shutdown time, close the
        store, flush metrics."""
        self._stopping.set()
        if self._loader is not None:
            self._loader.join(SHUTDOWN_SECONDS)
        self._cell_assigner.stop()
        for worker in self._workers():
            worker.stop(SHUTDOWN_SECONDS)
        if self.store is not None:
            self.store.close()
        self.metrics.flush()

    def _workers(self) -> tuple[BackgroundWorker, ...]:
        # The shadow scorer queues prediction records, so it stops before the writers.
        return (self._shadow, self._features, self._writer, self._log_writer)

    def _load(self, load_ranker: LoadRanker, store_factory: StoreFactory) -> None:
        settings = self.settings
        uri = settings.model_artifact_uri
        try:
            primary = ServedModel(settings.model_version, uri, load_ranker(uri))
        # Any failure, expected (ModelLoadError) or not, must end in the one line that says why.
        except Exception as exc:
            reason = _describe(exc)
            self.not_ready_reason = f"cannot load model {settings.model_version}: {reason}"
            LOGGER.error(
                "not ready: cannot load model %s version %s from %s: %s",
                settings.model_name,
                settings.model_version,
                settings.model_artifact_uri,
                reason,
            )
            self._loaded.set()
            return
        store_configured = self._connect_store(store_factory)
        self._cell_assigner.start()
        self.primary = primary
        LOGGER.info(
            "ready: serving model %s version %s (%d titles)",
            settings.model_name,
            primary.version,
            primary.ranker.num_titles,
        )
        self._load_candidate(load_ranker)
        self._loaded.set()
        if store_configured:
            self._retry_store(store_factory)

    def _load_candidate(self, load_ranker: LoadRanker) -> None:
        version = self.settings.candidate_model_version
        uri = self.settings.candidate_model_artifact_uri
        if version is None or uri is None:
            return
        try:
            self.candidate = ServedModel(version, uri, load_ranker(uri))
        # The primary serves on whatever went wrong with the candidate.
        except Exception as exc:
            LOGGER.warning(
                "candidate model %s not loaded from %s: %s", version, uri, _describe(exc)
            )

    def _connect_store(self, store_factory: StoreFactory) -> bool:
        """Try once to connect; return whether a store is configured at all."""
        try:
            self.store = store_factory(self.settings)
        # The driver raises many types for an unreachable or misconfigured cluster.
        except Exception as exc:
            LOGGER.warning("member history unavailable: %s", one_line(exc))
            return True
        if self.store is None:
            LOGGER.warning(
                "KEYSPACE is not set: no member history, responses are marked store_unavailable"
            )
            return False
        return True

    def _retry_store(self, store_factory: StoreFactory) -> None:
        for attempt in itertools.count():
            if self.store is not None:
                return
            delay = STORE_RETRY_SECONDS[min(attempt, len(STORE_RETRY_SECONDS) - 1)]
            if self._stopping.wait(delay):
                return
            self._connect_store(store_factory)

    # Requests.

    @property
    def ready(self) -> bool:
        return self.primary is not None

    async def recommend(self, member_id: str, k: int) -> Recommendation:
        """Rank titles for the member; raise :class:`NotReadyError` when no model is loaded."""
        primary = self.primary
        if primary is None:
            raise NotReadyError(self.not_ready_reason)
        started = time.perf_counter()
        served, assignment = self._choose_model(member_id, primary)
        history, store_fallback = await self._history(member_id)
        ranking = served.ranker.rank(member_id, k, history)
        result = Recommendation(
            member_id=member_id,
            model_name=self.settings.model_name,
            model_version=served.version,
            title_ids=ranking.title_ids,
            scores=ranking.scores,
            fallback="popularity" if ranking.popularity else store_fallback,
            experiment=assignment.experiment if assignment else None,
            cell=assignment.cell if assignment else None,
        )
        self._write(result, model=served, history=None if store_fallback else history)
        # A request the candidate answered for its cell has nothing left to shadow.
        if served is primary and self.in_shadow_sample(member_id):
            request = _ShadowRequest(
                served=result, history=history, store_fallback=store_fallback, k=k
            )
            self._queue(self._shadow, request, "ShadowDropped", primary.version)
        if self._feature_reader is not None:
            self._queue(self._features, member_id, "FeatureReadDropped", served.version)
        dimensions = self._dimensions(served.version)
        self._record_ranking(dimensions, ranking, store_fallback)
        if assignment is not None:
            self.metrics.exposed(dimensions, experiment=assignment.experiment, cell=assignment.cell)
        self.metrics.answered(
            dimensions,
            outcome=result.fallback or "ok",
            milliseconds=(time.perf_counter() - started) * 1000,
        )
        return result

    def count_error(self) -> None:
        """Count a request that failed on the service's side."""
        self.metrics.count(self._dimensions(self.settings.model_version), "Error")

    def _choose_model(
        self, member_id: str, primary: ServedModel
    ) -> tuple[ServedModel, Assignment | None]:
        try:
            assignment = self._cell_assigner.assign(member_id)
        # The allocator is someone else's code; its failure must not fail the request.
        except Exception:
            self.metrics.count(self._dimensions(primary.version), "AssignmentError")
            return primary, None
        if assignment is None:
            return primary, None
        for model in (primary, self.candidate):
            if model is not None and model.version == assignment.model_version:
                return model, assignment
        # The member stays in their cell: dropping them would skew the cells' sizes, and the
        # record's version shows the answer was not the cell's model's.
        self.metrics.count(self._dimensions(primary.version), "ExperimentVersionUnavailable")
        return primary, assignment

    async def _history(self, member_id: str) -> tuple[list[str], Fallback | None]:
        store = self.store
        if store is None:
            return [], "store_unavailable"
        try:
            async with asyncio.timeout(self.settings.store_timeout_seconds):
                return await store.recent_title_ids(member_id), None
        except TimeoutError:
            return [], "store_timeout"
        # Whatever the store raises, the model still answers, only without the exclusion.
        except Exception:
            return [], "store_unavailable"

    def in_shadow_sample(self, member_id: str) -> bool:
        """Whether the candidate also scores this member's requests."""
        fraction = self.settings.shadow_fraction
        if self.candidate is None or fraction <= 0:
            return False
        # A hash of the member id, not a random draw, so the sample is the same on every task
        # and in every run.
        digest = hashlib.blake2b(member_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") < fraction * 2**64

    def _score_candidate(self, requests: list[_ShadowRequest]) -> None:
        candidate = self.candidate
        if candidate is None:
            return
        dimensions = self._dimensions(candidate.version)
        for request in requests:
            served = request.served
            ranking = candidate.ranker.rank(served.member_id, request.k, request.history)
            self._record_ranking(dimensions, ranking, None)
            self.metrics.observe(
                dimensions, "ShadowOverlapAtK", _overlap(served.title_ids, ranking.title_ids)
            )
            shadow = Recommendation(
                member_id=served.member_id,
                model_name=self.settings.model_name + SHADOW_MODEL_NAME_SUFFIX,
                model_version=candidate.version,
                title_ids=ranking.title_ids,
                scores=ranking.scores,
                fallback="popularity" if ranking.popularity else request.store_fallback,
                experiment=None,
                cell=None,
            )
            history = None if request.store_fallback else request.history
            self._write(shadow, model=candidate, history=history)

    def _read_feature_ages(self, member_ids: list[str]) -> None:
        reader = self._feature_reader
        if reader is None:
            return
        dimensions = self._dimensions(self.settings.model_version)
        for member_id in member_ids:
            try:
                age = reader.age_seconds(member_id)
            # botocore raises many types for throttling, timeouts and service errors.
            except Exception:
                self.metrics.count(dimensions, "FeatureReadError")
                continue
            if age is None:
                self.metrics.count(dimensions, "FeatureRecordMissing")
            else:
                self.metrics.observe(dimensions, "FeatureAge", age, "Seconds")

    def _write(
        self, result: Recommendation, *, model: ServedModel, history: list[str] | None
    ) -> None:
        """Queue the record of ``result`` for the table and the log, where they are configured.

        ``history`` is the one ``model`` ranked with, or None when it could not be read.
        """
        if self.store is None and self._prediction_log is None:
            return
        record = PredictionRecord(
            member_id=result.member_id,
            model_name=result.model_name,
            model_version=result.model_version,
            title_ids=result.title_ids,
            scores=result.scores,
            generated_at=datetime.now(UTC),
            experiment=result.experiment,
            cell=result.cell,
        )
        if self.store is not None:
            self._queue(self._writer, record, "PredictionWriteDropped", result.model_version)
        if self._prediction_log is not None:
            entry = LoggedPrediction(
                record=record,
                model_artifact_uri=model.artifact_uri,
                fallback=result.fallback,
                history=history,
                title_positives=model.ranker.title_positives,
            )
            self._queue(self._log_writer, entry, "PredictionLogDropped", result.model_version)

    def _write_records(self, records: list[PredictionRecord]) -> None:
        store = self.store
        if store is None:
            return
        try:
            failed = store.write_predictions(records)
        # Whatever the store raised, the batch is lost; the metric tells how many records.
        except Exception:
            failed = records
        for record in failed:
            self.metrics.count(self._dimensions(record.model_version), "PredictionWriteError")

    def _write_log(self, entries: list[LoggedPrediction]) -> None:
        prediction_log = self._prediction_log
        if prediction_log is None:
            return
        lost = Counter(entry.record.model_version for entry in prediction_log.write(entries))
        for version, records in lost.items():
            self.metrics.count(self._dimensions(version), "PredictionLogWriteError", records)

    def _queue(
        self, worker: BackgroundWorker[_Item], item: _Item, dropped: str, version: str
    ) -> None:
        if not worker.submit(item):
            self.metrics.count(self._dimensions(version), dropped)

    def _record_ranking(
        self, dimensions: dict[str, str], ranking: Ranking, store_fallback: Fallback | None
    ) -> None:
        # Popularity scores are counts, on another scale than the model's: they would swamp
        # the score distribution the canary analysis compares between versions.
        if ranking.scores and not ranking.popularity:
            self.metrics.observe(dimensions, "TopScore", ranking.scores[0])
        reasons = (["popularity"] if ranking.popularity else []) + (
            [store_fallback] if store_fallback else []
        )
        for reason in reasons:
            self.metrics.count({**dimensions, "Reason": reason}, "Fallback")

    def _dimensions(self, version: str) -> dict[str, str]:
        return {"ModelName": self.settings.model_name, "ModelVersion": version}


def _overlap(served: Sequence[str], candidate: Sequence[str]) -> float:
    """Share of the longer top-k list that both lists hold: 1.0 for the same titles."""
    longest = max(len(served), len(candidate))
    return len(set(served) & set(candidate)) / longest if longest else 1.0


def _describe(exc: Exception) -> str:
    # A ModelLoadError's message is the reason; anything else is unexpected and says its type.
    if isinstance(exc, ModelLoadError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {one_line(exc)}"
