"""The FastAPI app: health, model information and recommendations.

``create_app`` takes the settings (or the error that made them invalid) and the service's
collaborators, so tests and the benchmark swap the store, the model loader and the cell
assigner without touching the environment. Nothing starts before the app's lifespan does;
with valid settings, the lifespan also serves the Prometheus metrics on ``METRICS_PORT``.
With ``EXPERIMENTS_TABLE``, members are assigned to the cells of ABlaze's running
experiments on ``EXPERIMENT_SURFACE``, reloaded every ``EXPERIMENTS_REFRESH_SECONDS``.

Status codes: 422 for any request that does not fit :class:`RecommendationRequest`
(malformed JSON included); 503 while no model is loaded; 500 only for a fault of the
service itself, counted by the ``Error`` metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import boto3
from botocore.config import Config
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from ablaze.allocation import ExperimentAssigner
from ablaze.store import ExperimentStore
from serving.recommender_service.experiments import AblazeAssigner, CellAssigner, NoExperiments
from serving.recommender_service.features import FeatureReader, feature_store_client
from serving.recommender_service.logs import LOGGER, one_line
from serving.recommender_service.metrics import EmfMetrics, Metrics
from serving.recommender_service.model_source import load_ranker
from serving.recommender_service.prediction_log import PredictionLog
from serving.recommender_service.prometheus import MetricsServer, PrometheusMetrics
from serving.recommender_service.schemas import (
    Health,
    ModelInfo,
    RecommendationRequest,
    RecommendationResponse,
    RecommendedTitle,
)
from serving.recommender_service.service import (
    LoadRanker,
    NotReadyError,
    RecommenderService,
    StoreFactory,
)
from serving.recommender_service.settings import Settings, SettingsError
from serving.recommender_service.store import MemberStore, connect_keyspaces

METRICS_FLUSH_SECONDS = 1.0
# The collector sidecar shares the task's network namespace; nothing else needs the metrics.
METRICS_HOST = "127.0.0.1"
NOT_READY = {503: {"model": Health, "description": "no model is loaded"}}
# The first load of the experiments holds readiness back: a table that does not answer must
# not hold it for long, and a failed load is retried at the next refresh anyway.
EXPERIMENTS_CLIENT_CONFIG = Config(
    connect_timeout=2, read_timeout=2, retries={"mode": "standard", "max_attempts": 2}
)


def keyspaces_store(settings: Settings) -> MemberStore | None:
    """The production store: Keyspaces when ``KEYSPACE`` is set, none otherwise."""
    if settings.keyspace is None or settings.aws_region is None:
        return None
    return connect_keyspaces(
        region=settings.aws_region,
        keyspace=settings.keyspace,
        read_timeout=settings.store_timeout_seconds,
    )


def feature_store_reader(settings: Settings) -> FeatureReader | None:
    """The production feature reader: when ``FEATURE_GROUP_NAME`` is set, none otherwise."""
    if settings.feature_group_name is None or settings.aws_region is None:
        return None
    return FeatureReader(
        client=feature_store_client(settings.aws_region),
        feature_group_name=settings.feature_group_name,
    )


def s3_prediction_log(settings: Settings) -> PredictionLog | None:
    """The prediction log in S3 when ``PREDICTION_LOG_URI`` is set, none otherwise."""
    location = settings.prediction_log_location
    if location is None:
        return None
    bucket, prefix = location
    return PredictionLog(
        s3_client=boto3.client("s3", region_name=settings.aws_region), bucket=bucket, prefix=prefix
    )


def ablaze_cell_assigner(settings: Settings) -> CellAssigner:
    """The running experiments of ``EXPERIMENT_SURFACE`` when ``EXPERIMENTS_TABLE`` is set,
    no experiments otherwise."""
    if settings.experiments_table is None or settings.experiment_surface is None:
        return NoExperiments()
    store = ExperimentStore(
        client=boto3.client(
            "dynamodb", region_name=settings.aws_region, config=EXPERIMENTS_CLIENT_CONFIG
        ),
        table_name=settings.experiments_table,
    )
    surface = settings.experiment_surface
    return AblazeAssigner(
        ExperimentAssigner(
            loader=lambda: store.running_allocations(surface),
            refresh_seconds=settings.experiments_refresh_seconds,
        )
    )


def create_app(
    settings: Settings | SettingsError,
    *,
    load_model: LoadRanker = load_ranker,
    store_factory: StoreFactory = keyspaces_store,
    feature_reader: FeatureReader | None = None,
    cell_assigner: CellAssigner | None = None,
    metrics_stream: TextIO | None = None,
    metrics_port: int | None = None,
) -> FastAPI:
    """Return the app; with valid settings its lifespan loads the model and starts workers.

    ``feature_reader`` defaults to :func:`feature_store_reader` of the settings,
    ``cell_assigner`` to :func:`ablaze_cell_assigner` (the service starts and stops either);
    ``metrics_port`` to ``METRICS_PORT`` (0: a free port the system picks, as tests use).
    The port the metrics are served on is ``app.state.metrics_server.port`` once started.
    """
    service = None
    if isinstance(settings, Settings):
        service = RecommenderService(
            settings=settings,
            metrics=_service_metrics(
                settings, sys.stdout if metrics_stream is None else metrics_stream
            ),
            cell_assigner=(
                ablaze_cell_assigner(settings) if cell_assigner is None else cell_assigner
            ),
            feature_reader=(
                feature_store_reader(settings) if feature_reader is None else feature_reader
            ),
            prediction_log=s3_prediction_log(settings),
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is None:
            LOGGER.error("not ready: invalid settings: %s", settings)
            yield
            return
        port = service.settings.metrics_port if metrics_port is None else metrics_port
        metrics_server = _serve_metrics(service.metrics.prometheus, port)
        app.state.metrics_server = metrics_server
        service.start(load_ranker=load_model, store_factory=store_factory)
        flusher = asyncio.create_task(_flush_metrics(service.metrics))
        try:
            yield
        finally:
            flusher.cancel()
            await asyncio.to_thread(service.stop)
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.stop)

    prefix = settings.url_prefix if isinstance(settings, Settings) else ""
    app = FastAPI(
        title="Recommender serving",
        summary="Ranks titles for members with the registered recommender model version.",
        version="1",
        openapi_url=f"{prefix}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics_server = None
    _add_error_handlers(app, service, settings)
    app.include_router(_routes(service, settings), prefix=prefix)
    return app


def _not_ready_reason(
    service: RecommenderService | None, settings: Settings | SettingsError
) -> str:
    return service.not_ready_reason if service else f"invalid settings: {settings}"


def _add_error_handlers(
    app: FastAPI, service: RecommenderService | None, settings: Settings | SettingsError
) -> None:
    @app.exception_handler(NotReadyError)
    async def _not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        if service is not None:
            service.count_error()
        return _not_ready_response(_not_ready_reason(service, settings))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        LOGGER.exception("%s %s failed", request.method, request.url.path)
        if service is not None:
            service.count_error()
        return JSONResponse({"detail": "internal error"}, status_code=500)


def _routes(service: RecommenderService | None, settings: Settings | SettingsError) -> APIRouter:
    router = APIRouter()

    def not_ready_reason() -> str:
        return _not_ready_reason(service, settings)

    @router.get("/health/live", response_model=Health)
    async def live() -> Health:
        """The process is up and answering."""
        return Health(status="live")

    @router.get("/health/ready", response_model=Health, responses=NOT_READY)
    async def ready() -> Health | JSONResponse:
        """200 once the model is loaded; 503 before, or for good when it cannot be loaded."""
        if service is None or not service.ready:
            return _not_ready_response(not_ready_reason())
        return Health(status="ready")

    @router.get("/model", response_model=ModelInfo, responses=NOT_READY)
    async def model() -> ModelInfo | JSONResponse:
        """The model version served, its training date and its offline metrics."""
        if service is None or service.primary is None:
            return _not_ready_response(not_ready_reason())
        config = service.settings
        return ModelInfo(
            name=config.model_name,
            version=config.model_version,
            training_date=config.model_training_date,
            package_arn=config.model_package_arn,
            metrics=config.model_metrics or service.primary.ranker.metrics,
            candidate_version=config.candidate_model_version,
            candidate_loaded=service.candidate is not None,
            shadow_fraction=config.shadow_fraction,
        )

    @router.post("/recommendations", response_model=RecommendationResponse, responses=NOT_READY)
    async def recommendations(request: RecommendationRequest) -> RecommendationResponse:
        """Rank titles for a member, leaving out the titles they saw recently."""
        if service is None:
            raise NotReadyError(not_ready_reason())
        result = await service.recommend(request.member_id, request.k)
        return RecommendationResponse(
            member_id=result.member_id,
            model_name=result.model_name,
            model_version=result.model_version,
            items=[
                RecommendedTitle(title_id=title, score=score)
                for title, score in zip(result.title_ids, result.scores, strict=True)
            ],
            fallback=result.fallback,
            experiment=result.experiment,
            cell=result.cell,
        )

    return router


def _not_ready_response(reason: str) -> JSONResponse:
    return JSONResponse(Health(status="not ready", reason=reason).model_dump(), status_code=503)


def _service_metrics(settings: Settings, stream: TextIO) -> Metrics:
    return Metrics(
        emf=EmfMetrics(namespace=settings.metrics_namespace, stream=stream),
        prometheus=PrometheusMetrics(
            model_name=settings.model_name,
            model_version=settings.model_version,
            candidate_version=settings.candidate_model_version,
        ),
    )


def _serve_metrics(metrics: PrometheusMetrics, port: int) -> MetricsServer | None:
    """Start serving the Prometheus metrics; on failure, log it and serve without them."""
    try:
        server = MetricsServer(metrics.registry, host=METRICS_HOST, port=port)
    # The answers do not depend on the metrics: a busy port must not take the service down.
    except OSError as exc:
        LOGGER.error(
            "Prometheus metrics not served: cannot listen on %s:%d: %s",
            METRICS_HOST,
            port,
            one_line(exc),
        )
        return None
    server.start()
    return server


async def _flush_metrics(metrics: Metrics) -> None:
    # Without traffic nothing else would write the last figures.
    while True:
        await asyncio.sleep(METRICS_FLUSH_SECONDS)
        metrics.flush_if_due()
