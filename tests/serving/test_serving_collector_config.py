"""The collector sidecar's configuration: scrape the app's metrics port, remote-write to AMP."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "serving" / "otel-collector.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_apps_metrics_port_is_scraped_every_30_seconds(config: dict) -> None:
    [scrape] = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert scrape["scrape_interval"] == "30s"
    assert [target["targets"] for target in scrape["static_configs"]] == [
        ["localhost:${env:METRICS_PORT}"]
    ]


def test_metrics_are_remote_written_to_amp_signed_with_sigv4(config: dict) -> None:
    assert config["extensions"]["sigv4auth"] == {"region": "${env:AWS_REGION}", "service": "aps"}
    assert config["exporters"]["prometheusremotewrite"] == {
        "endpoint": "${env:AMP_REMOTE_WRITE_URL}",
        "auth": {"authenticator": "sigv4auth"},
    }
    service = config["service"]
    assert service["extensions"] == ["sigv4auth"]
    assert service["pipelines"]["metrics"]["receivers"] == ["prometheus"]
    assert service["pipelines"]["metrics"]["exporters"] == ["prometheusremotewrite"]


def test_every_component_of_the_pipeline_is_configured(config: dict) -> None:
    for kind, names in config["service"]["pipelines"]["metrics"].items():
        assert set(names) <= set(config[kind]), kind


def test_each_task_writes_its_own_series(config: dict) -> None:
    # Every task scrapes localhost: without its own instance label, tasks would overwrite
    # each other's series.
    processors = config["service"]["pipelines"]["metrics"]["processors"]
    assert processors.index("resourcedetection") < processors.index("resource")
    assert config["processors"]["resourcedetection"]["detectors"] == ["ecs"]
    assert config["processors"]["resource"]["attributes"] == [
        {"key": "service.instance.id", "from_attribute": "aws.ecs.task.arn", "action": "upsert"}
    ]


def test_placeholders_are_the_collectors_env_references() -> None:
    text = CONFIG.read_text()
    references = re.findall(r"\$\{([^}]*)\}", text)
    assert set(references) == {"env:METRICS_PORT", "env:AMP_REMOTE_WRITE_URL", "env:AWS_REGION"}
    # A bare $NAME would reach Prometheus' scrape configuration unexpanded.
    assert text.count("$") == len(references)
