"""Fixtures for the serving app tests: tiny real model folders and a started app."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_helpers import (
    BASE_ENVIRONMENT,
    HISTORIES,
    LOAD_TIMEOUT_SECONDS,
    MEMBER_VECTORS,
    RunningApp,
    StartApp,
    save_tiny_model,
)

from serving.recommender_service.app import create_app
from serving.recommender_service.settings import read_settings
from serving.recommender_service.store import InMemoryStore


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The primary model's folder."""
    return save_tiny_model(tmp_path_factory.mktemp("primary") / "model", MEMBER_VECTORS)


@pytest.fixture(scope="session")
def candidate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The candidate model's folder: m0 and m1 swap their vectors."""
    swapped = [MEMBER_VECTORS[1], MEMBER_VECTORS[0], *MEMBER_VECTORS[2:]]
    return save_tiny_model(tmp_path_factory.mktemp("candidate") / "model", swapped)


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a fixed region, so nothing can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def start_app(model_dir: Path) -> Iterator[StartApp]:
    """Start the app with the primary model and an in-memory store; wait for loading.

    ``start_app(env={...}, store=..., wait=True, **create_app_kwargs)``: ``env`` is merged
    over the base environment; ``store=None`` configures no store.
    """
    with contextlib.ExitStack() as stack:

        def start(
            *,
            env: Mapping[str, str] | None = None,
            store: InMemoryStore | Any | None = ...,
            wait: bool = True,
            raise_server_exceptions: bool = True,
            **kwargs: Any,
        ) -> RunningApp:
            if store is ...:
                store = InMemoryStore(histories=HISTORIES)
            environment = {**BASE_ENVIRONMENT, "MODEL_ARTIFACT_URI": str(model_dir), **(env or {})}
            output = io.StringIO()
            kwargs.setdefault("store_factory", lambda settings: store)
            # A free port each: apps run side by side, and other test runs share the host.
            kwargs.setdefault("metrics_port", 0)
            app = create_app(read_settings(environment), metrics_stream=output, **kwargs)
            client = stack.enter_context(
                TestClient(app, raise_server_exceptions=raise_server_exceptions)
            )
            if wait and app.state.service is not None:
                assert app.state.service.wait_until_loaded(LOAD_TIMEOUT_SECONDS)
            return RunningApp(app=app, client=client, store=store, metrics_output=output)

        yield start
