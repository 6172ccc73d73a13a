"""The service around the app: settings, the model registry, the wiring and the health check."""

from __future__ import annotations

import logging
from typing import Any

import boto3
import pytest
from ablaze_helpers import REGION, serving, spec
from fastapi.testclient import TestClient

from ablaze import __main__ as entry_point
from ablaze import healthcheck
from ablaze.registry import approved_model_versions
from ablaze.settings import Settings, SettingsError, load_settings

ENVIRONMENT = {
    "EXPERIMENTS_TABLE": "ablaze-experiments",
    "RESULTS_TABLE": "ablaze-results",
    "AWS_REGION": REGION,
    "MODEL_PACKAGE_GROUP": "title-recommender",
}
INFERENCE = {
    "Containers": [{"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/serving:1"}],
    "SupportedContentTypes": ["application/json"],
    "SupportedResponseMIMETypes": ["application/json"],
}


def test_settings_are_read_from_the_environment() -> None:
    settings = load_settings({**ENVIRONMENT, "URL_PREFIX": "/ablaze", "PORT": "9000", "HOME": "/"})
    assert settings == Settings(
        experiments_table="ablaze-experiments",
        results_table="ablaze-results",
        aws_region=REGION,
        model_package_group="title-recommender",
        url_prefix="/ablaze",
        port=9000,
    )


def test_optional_settings_default() -> None:
    settings = load_settings({**ENVIRONMENT, "URL_PREFIX": ""})
    assert (settings.url_prefix, settings.port) == ("", 8080)


def test_invalid_settings_are_named_on_one_line() -> None:
    environment = {**ENVIRONMENT, "URL_PREFIX": "ablaze/", "PORT": "0"}
    del environment["RESULTS_TABLE"]
    with pytest.raises(SettingsError) as caught:
        load_settings(environment)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("RESULTS_TABLE is required; URL_PREFIX='ablaze/': String should")
    assert "PORT='0': Input should be greater than or equal to 1" in message


@pytest.fixture(scope="module")
def registry(aws: None) -> Any:
    """A model package group in moto's SageMaker with versions 1 and 3 approved (for the
    module: moto cannot delete model packages)."""
    client = boto3.client("sagemaker", region_name=REGION)
    client.create_model_package_group(ModelPackageGroupName="title-recommender")
    for status in ("Approved", "Rejected", "Approved", "PendingManualApproval"):
        client.create_model_package(
            ModelPackageGroupName="title-recommender",
            ModelApprovalStatus=status,
            InferenceSpecification=INFERENCE,
        )
    return client


def test_known_versions_are_the_approved_ones(registry: Any) -> None:
    versions = approved_model_versions(client=registry, model_package_group="title-recommender")
    assert versions == frozenset({"1", "3"})


def test_the_production_app_uses_the_tables_and_the_registry(registry: Any, dynamodb: Any) -> None:
    client = TestClient(entry_point.production_app(load_settings(ENVIRONMENT)))
    approved = [
        {"name": "control", "percent": 10, "model_version": "1", "control": True},
        {"name": "treatment", "percent": 10, "model_version": "3"},
    ]
    assert client.post("/experiments", json=spec(cells=approved)).status_code == 201
    rejected = [approved[0], {**approved[1], "model_version": "2"}]
    response = client.post("/experiments", json=spec(id="other", cells=rejected))
    assert response.json()["detail"] == (
        "cells[1].model_version: unknown model version '2' (known versions: 1, 3)"
    )
    assert [e["id"] for e in client.get("/experiments").json()] == ["homepage-ranker"]


def test_invalid_settings_end_the_process_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.ERROR, logger="ablaze"):
        assert entry_point.main() == 2
    assert "invalid settings: EXPERIMENTS_TABLE is required;" in caplog.text


def test_the_health_check_asks_the_health_route(
    dynamodb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings({**ENVIRONMENT, "URL_PREFIX": "/ablaze"})
    with serving(entry_point.production_app(settings)) as port:
        assert healthcheck.is_healthy(port, "/ablaze")
        assert not healthcheck.is_healthy(port, "/elsewhere")
        monkeypatch.setenv("PORT", str(port))
        monkeypatch.setenv("URL_PREFIX", "/ablaze")
        assert healthcheck.main() == 0
    assert not healthcheck.is_healthy(port, "/ablaze")
