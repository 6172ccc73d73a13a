"""Fixtures for the ABlaze tests: DynamoDB and SageMaker in moto, the stores and the app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from ablaze_helpers import (
    EXPERIMENTS_TABLE,
    KNOWN_VERSIONS,
    REGION,
    RESULTS_TABLE,
    SETTINGS,
    Clock,
    create_tables,
)
from fastapi.testclient import TestClient
from moto import mock_aws

from ablaze.api import create_app
from ablaze.store import ExperimentStore, ResultStore


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives headless Chromium against the app on uvicorn"
    )


def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a fixed region, so nothing can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_credentials(monkeypatch)


@pytest.fixture(scope="module")
def aws() -> Iterator[None]:
    """moto for a whole module: making a client costs 50 ms, making tables a few."""
    with pytest.MonkeyPatch.context() as monkeypatch, mock_aws():
        fake_credentials(monkeypatch)
        yield


@pytest.fixture(scope="module")
def dynamodb_client(aws: None) -> Any:
    return boto3.client("dynamodb", region_name=REGION)


@pytest.fixture
def dynamodb(dynamodb_client: Any) -> Iterator[Any]:
    """A DynamoDB client of moto's, with both tables made for this test alone."""
    create_tables(dynamodb_client)
    yield dynamodb_client
    for table in (EXPERIMENTS_TABLE, RESULTS_TABLE):
        dynamodb_client.delete_table(TableName=table)


@pytest.fixture
def experiments(dynamodb: Any) -> ExperimentStore:
    return ExperimentStore(client=dynamodb, table_name=EXPERIMENTS_TABLE)


@pytest.fixture
def results(dynamodb: Any) -> ResultStore:
    return ResultStore(client=dynamodb, table_name=RESULTS_TABLE)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(experiments: ExperimentStore, results: ResultStore, clock: Clock) -> TestClient:
    """The app without a URL prefix, over moto's tables, knowing versions 7, 8 and 9."""
    app = create_app(
        SETTINGS,
        experiments=experiments,
        results=results,
        known_model_versions=lambda: KNOWN_VERSIONS,
        clock=clock,
    )
    return TestClient(app)
