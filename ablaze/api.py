"""The FastAPI app: experiments, their state and allocation, their results, and the pages.

Every route is under ``URL_PREFIX``. Errors are ``{"detail": "<one line>"}``: 422 for an
invalid request (naming the fields), 404 for an unknown experiment or one without a usable
result (none written yet, or the latest cannot be read; the detail says which),
409 for a change its state does not allow (draft -> running -> stopped; a running
experiment's cells only grow; one running experiment per surface). The handlers are plain
functions, so FastAPI runs them on its thread pool and the blocking DynamoDB calls never
hold up the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from ablaze import pages
from ablaze.experiments import (
    AllocationChange,
    ConflictError,
    Experiment,
    ExperimentSpec,
    InvalidExperimentError,
    Slug,
    State,
    check_model_versions,
    create_experiment,
    reallocated,
    started,
    stopped,
)
from ablaze.results import Result
from ablaze.settings import Settings
from ablaze.store import (
    ExperimentStore,
    NotFoundError,
    ResultNotFoundError,
    ResultStore,
    UnusableResultError,
)

KnownModelVersions = Callable[[], Collection[str]]
ERRORS = {
    404: {"description": "no such experiment, or no usable result yet"},
    409: {"description": "the experiment's state does not allow the change"},
    422: {"description": "the request is invalid; the detail names the fields"},
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    settings: Settings,
    *,
    experiments: ExperimentStore,
    results: ResultStore,
    known_model_versions: KnownModelVersions,
    clock: Callable[[], datetime] = utc_now,
) -> FastAPI:
    """The app over the given stores; ``known_model_versions`` is asked on every create and
    start, so cells only name versions that can be served."""
    prefix = settings.url_prefix
    app = FastAPI(
        title="ABlaze",
        summary="A/B experiments: cells, allocation, state and results.",
        version="1",
        openapi_url=f"{prefix}/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    _add_error_handlers(app)
    routes = _Routes(
        experiments=experiments,
        results=results,
        known_model_versions=known_model_versions,
        clock=clock,
        prefix=prefix,
    )
    app.include_router(routes.router, prefix=prefix)
    return app


class _Routes:
    def __init__(
        self,
        *,
        experiments: ExperimentStore,
        results: ResultStore,
        known_model_versions: KnownModelVersions,
        clock: Callable[[], datetime],
        prefix: str,
    ) -> None:
        self.experiments = experiments
        self.results = results
        self.known_model_versions = known_model_versions
        self.clock = clock
        self.prefix = prefix
        self.router = APIRouter(responses=ERRORS)
        self._add_api_routes()
        self._add_page_routes()

    def _add_api_routes(self) -> None:
        router = self.router

        @router.get("/health")
        def health() -> dict[str, str]:
            """The process is up and answering."""
            return {"status": "ok"}

        @router.post("/experiments", status_code=201)
        def create(spec: ExperimentSpec) -> Experiment:
            """Create a draft experiment; its salt and bucket layout are made here."""
            check_model_versions(spec.cells, self.known_model_versions())
            experiment = create_experiment(spec, now=self.clock())
            self.experiments.create(experiment)
            return experiment

        @router.get("/experiments")
        def find(surface: Slug | None = None, state: State | None = None) -> list[Experiment]:
            """Every experiment by id, optionally of one surface and/or in one state."""
            return self.experiments.find(surface=surface, state=state)

        @router.get("/experiments/{experiment_id}")
        def get(experiment_id: str) -> Experiment:
            return self.experiments.get(experiment_id)

        @router.post("/experiments/{experiment_id}/start")
        def start(experiment_id: str) -> Experiment:
            """Start a draft; its model versions must still be known."""
            current = self.experiments.get(experiment_id)
            check_model_versions(current.cells, self.known_model_versions())
            return self.experiments.save(started(current, now=self.clock()), previous=current)

        @router.post("/experiments/{experiment_id}/stop")
        def stop(experiment_id: str) -> Experiment:
            current = self.experiments.get(experiment_id)
            return self.experiments.save(stopped(current, now=self.clock()), previous=current)

        @router.patch("/experiments/{experiment_id}/allocation")
        def change_allocation(experiment_id: str, change: AllocationChange) -> Experiment:
            """Set the percentages of the cells named; a running experiment's cells only grow."""
            current = self.experiments.get(experiment_id)
            updated = reallocated(current, change, now=self.clock())
            return self.experiments.save(updated, previous=current)

        @router.get("/experiments/{experiment_id}/results")
        def result(experiment_id: str) -> Result:
            """The analysis of the latest observations the analysis job wrote."""
            experiment = self.experiments.get(experiment_id)
            latest = self.results.latest(experiment)
            if latest is None:
                raise ResultNotFoundError(
                    f"no results for {experiment.id!r} yet: the analysis job has written none"
                )
            return latest

    def _add_page_routes(self) -> None:
        router = self.router

        @router.get("/", response_class=HTMLResponse, include_in_schema=False)
        def index() -> str:
            return pages.experiments_page(self.experiments.find(), prefix=self.prefix)

        @router.get(
            "/experiments/{experiment_id}/page",
            response_class=HTMLResponse,
            include_in_schema=False,
        )
        def page(experiment_id: str) -> str:
            experiment = self.experiments.get(experiment_id)
            try:
                latest, unusable = self.results.latest(experiment), None
            except UnusableResultError as exc:
                latest, unusable = None, exc.reason
            return pages.experiment_page(
                experiment, latest, unusable_reason=unusable, prefix=self.prefix
            )


def _add_error_handlers(app: FastAPI) -> None:
    statuses: Mapping[type[Exception], int] = {
        InvalidExperimentError: 422,
        NotFoundError: 404,
        ConflictError: 409,
    }
    for error, status in statuses.items():
        app.add_exception_handler(error, _detail_handler(status))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_errors(exc.errors())}, status_code=422)


def _detail_handler(status: int) -> Callable:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handle


def describe_errors(errors: Iterable[Mapping]) -> str:
    """One line naming each invalid field of a request, e.g. ``cells[1].percent: ...``."""
    return "; ".join(_describe_error(error) for error in errors)


def _describe_error(error: Mapping) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    # "body" and "query" say where the field was, which the client knows already.
    location = [part for part in error["loc"] if part not in ("body", "query", "path")]
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    return f"{path.lstrip('.')}: {message}" if path else message
