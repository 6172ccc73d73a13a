"""Start-up: settings, loading the model from a folder or S3, and readiness."""

from __future__ import annotations

import io
import logging
import tarfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from moto import mock_aws
from serving_helpers import BASE_ENVIRONMENT, LOAD_TIMEOUT_SECONDS, PRIMARY_RANKING

from serving.recommender_service.model_source import load_ranker
from serving.recommender_service.ranker import Ranker
from serving.recommender_service.settings import (
    DEFAULT_METRICS_NAMESPACE,
    Settings,
    SettingsError,
    read_settings,
)

if TYPE_CHECKING:
    from serving_helpers import StartApp

BUCKET = "mlp-dev-models-123456789012-us-east-1"
KEY = "models/title-recommender/job-7/output/model.tar.gz"


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def pack(model_dir: Path) -> bytes:
    """A SageMaker-style model.tar.gz: the folder's files at the archive's root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(model_dir.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


@pytest.fixture
def s3() -> boto3.client:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


# Settings.


def test_settings_defaults_and_empty_variables() -> None:
    settings = read_settings(
        {
            **BASE_ENVIRONMENT,
            "MODEL_ARTIFACT_URI": "/opt/model",
            "CANDIDATE_MODEL_VERSION": "",
            "CANDIDATE_MODEL_ARTIFACT_URI": "",
            "KEYSPACE": "",
            "FEATURE_GROUP_NAME": "none",
            "UNRELATED": "x",
        }
    )
    assert isinstance(settings, Settings)
    assert (settings.port, settings.store_timeout_ms, settings.shadow_fraction) == (8080, 50, 0.0)
    assert settings.metrics_namespace == DEFAULT_METRICS_NAMESPACE == "MLPlatform/Serving"
    assert (settings.keyspace, settings.candidate_model_version, settings.model_metrics) == (
        None,
        None,
        None,
    )
    assert (settings.feature_group_name, settings.url_prefix) == (None, "")
    assert (settings.metrics_port, settings.prediction_log_uri) == (9464, None)
    assert (settings.prediction_log_flush_seconds, settings.prediction_log_location) == (60, None)
    assert (settings.experiments_table, settings.experiment_surface) == (None, None)
    assert settings.experiments_refresh_seconds == 30


def test_the_stacks_placeholders_mean_unset() -> None:
    # A CloudFormation parameter cannot be empty: the stack passes "none" for no candidate.
    settings = read_settings(
        {
            **BASE_ENVIRONMENT,
            "MODEL_ARTIFACT_URI": "/opt/model",
            "MODEL_TRAINING_DATE": "unknown",
            "MODEL_METRICS": "{}",
            "CANDIDATE_MODEL_VERSION": "none",
            "CANDIDATE_MODEL_ARTIFACT_URI": "none",
            "SHADOW_FRACTION": "0.1",
        }
    )
    assert isinstance(settings, SettingsError)
    assert str(settings) == "SHADOW_FRACTION above 0 needs a candidate model"
    settings = read_settings(
        {
            **BASE_ENVIRONMENT,
            "MODEL_ARTIFACT_URI": "/opt/model",
            "MODEL_TRAINING_DATE": "unknown",
            "CANDIDATE_MODEL_VERSION": "None",
            "CANDIDATE_MODEL_ARTIFACT_URI": "none",
        }
    )
    assert isinstance(settings, Settings)
    assert (settings.candidate_model_version, settings.model_training_date) == (None, "unknown")


def test_settings_read_every_variable() -> None:
    settings = read_settings(
        {
            **BASE_ENVIRONMENT,
            "MODEL_ARTIFACT_URI": f"s3://{BUCKET}/{KEY}",
            "MODEL_METRICS": '{"recall_at_k": 0.3}',
            "CANDIDATE_MODEL_VERSION": "8",
            "CANDIDATE_MODEL_ARTIFACT_URI": "/opt/candidate",
            "SHADOW_FRACTION": "0.25",
            "KEYSPACE": "ml_platform_dev",
            "FEATURE_GROUP_NAME": "mlp-dev-member-features",
            "METRICS_NAMESPACE": "Team/Recs",
            "STORE_TIMEOUT_MS": "80",
            "PORT": "9000",
            "METRICS_PORT": "9100",
            "URL_PREFIX": "/title-recommender",
            "MODEL_PACKAGE_ARN": "arn:aws:sagemaker:us-east-1:123456789012:model-package/r/7",
            "PREDICTION_LOG_URI": "s3://mlp-dev-monitoring/predictions/",
            "PREDICTION_LOG_FLUSH_SECONDS": "30",
            "EXPERIMENTS_TABLE": "mlp-dev-experiments",
            "EXPERIMENT_SURFACE": "title-recommender",
            "EXPERIMENTS_REFRESH_SECONDS": "10",
        }
    )
    assert isinstance(settings, Settings)
    assert settings.model_dump() == {
        "model_name": "title-recommender",
        "model_version": "7",
        "model_artifact_uri": f"s3://{BUCKET}/{KEY}",
        "model_training_date": "2024-05-10",
        "model_package_arn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/r/7",
        "model_metrics": {"recall_at_k": 0.3},
        "candidate_model_version": "8",
        "candidate_model_artifact_uri": "/opt/candidate",
        "shadow_fraction": 0.25,
        "keyspace": "ml_platform_dev",
        "aws_region": "us-east-1",
        "feature_group_name": "mlp-dev-member-features",
        "metrics_namespace": "Team/Recs",
        "store_timeout_ms": 80,
        "port": 9000,
        "metrics_port": 9100,
        "prediction_log_uri": "s3://mlp-dev-monitoring/predictions/",
        "prediction_log_flush_seconds": 30.0,
        "url_prefix": "/title-recommender",
        "experiments_table": "mlp-dev-experiments",
        "experiment_surface": "title-recommender",
        "experiments_refresh_seconds": 10.0,
    }
    assert settings.store_timeout_seconds == 0.08
    assert settings.prediction_log_location == ("mlp-dev-monitoring", "predictions/")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MODEL_NAME": ""}, "MODEL_NAME is required"),
        (
            {"SHADOW_FRACTION": "1.5"},
            "SHADOW_FRACTION='1.5': Input should be less than or equal to 1",
        ),
        ({"STORE_TIMEOUT_MS": "fast"}, "STORE_TIMEOUT_MS='fast': Input should be a valid integer"),
        ({"PORT": "0"}, "PORT='0': Input should be greater than or equal to 1"),
        ({"MODEL_METRICS": "recall=0.3"}, "MODEL_METRICS='recall=0.3': Invalid JSON"),
        ({"MODEL_METRICS": '{"recall": "high"}'}, 'MODEL_METRICS=\'{"recall": "high"}\': Input'),
        ({"URL_PREFIX": "title-recommender"}, "URL_PREFIX='title-recommender': String should"),
        ({"URL_PREFIX": "/title-recommender/"}, "URL_PREFIX='/title-recommender/': String"),
        ({"KEYSPACE": "ml-platform"}, "KEYSPACE='ml-platform': String should match pattern"),
        ({"AWS_REGION": "Virginia"}, "AWS_REGION='Virginia': String should match pattern"),
        ({"KEYSPACE": "ml", "AWS_REGION": ""}, "KEYSPACE needs AWS_REGION"),
        ({"METRICS_NAMESPACE": "AWS/ECS"}, "METRICS_NAMESPACE must not start with AWS/"),
        (
            {"MODEL_ARTIFACT_URI": "s3://bucket/model.zip"},
            "MODEL_ARTIFACT_URI='s3://bucket/model.zip' must be s3://<bucket>/<key>.tar.gz",
        ),
        (
            {"CANDIDATE_MODEL_VERSION": "8"},
            "CANDIDATE_MODEL_VERSION and CANDIDATE_MODEL_ARTIFACT_URI must be set together",
        ),
        (
            {"CANDIDATE_MODEL_VERSION": "7", "CANDIDATE_MODEL_ARTIFACT_URI": "/opt/c"},
            "CANDIDATE_MODEL_VERSION must differ from MODEL_VERSION",
        ),
        ({"SHADOW_FRACTION": "0.1"}, "SHADOW_FRACTION above 0 needs a candidate model"),
        ({"METRICS_PORT": "8080"}, "METRICS_PORT must differ from PORT"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT='70000': Input should be less than or equal"),
        (
            {"PREDICTION_LOG_URI": "s3://mlp-dev-monitoring/predictions"},
            "PREDICTION_LOG_URI='s3://mlp-dev-monitoring/predictions' must be "
            "s3://<bucket>/<prefix>/, ending with /",
        ),
        (
            {"PREDICTION_LOG_URI": "/var/log/predictions/"},
            "PREDICTION_LOG_URI='/var/log/predictions/' must be s3://<bucket>/<prefix>/",
        ),
        (
            {"PREDICTION_LOG_URI": "s3://mlp-dev-monitoring//"},
            "PREDICTION_LOG_URI='s3://mlp-dev-monitoring//' must be s3://<bucket>/<prefix>/",
        ),
        (
            {"PREDICTION_LOG_FLUSH_SECONDS": "0"},
            "PREDICTION_LOG_FLUSH_SECONDS='0': Input should be greater than 0",
        ),
        (
            {"EXPERIMENTS_TABLE": "mlp-dev-experiments"},
            "EXPERIMENTS_TABLE and EXPERIMENT_SURFACE must be set together",
        ),
        (
            {"EXPERIMENT_SURFACE": "title-recommender"},
            "EXPERIMENTS_TABLE and EXPERIMENT_SURFACE must be set together",
        ),
        (
            {"EXPERIMENTS_TABLE": "t", "EXPERIMENT_SURFACE": "title-recommender"},
            "EXPERIMENTS_TABLE='t': String should match pattern",
        ),
        (
            {"EXPERIMENTS_TABLE": "mlp-dev-experiments", "EXPERIMENT_SURFACE": "Title Row"},
            "EXPERIMENT_SURFACE='Title Row': String should match pattern",
        ),
        (
            {
                "EXPERIMENTS_TABLE": "mlp-dev-experiments",
                "EXPERIMENT_SURFACE": "title-recommender",
                "AWS_REGION": "",
            },
            "EXPERIMENTS_TABLE needs AWS_REGION",
        ),
        (
            {"EXPERIMENTS_REFRESH_SECONDS": "0"},
            "EXPERIMENTS_REFRESH_SECONDS='0': Input should be greater than 0",
        ),
    ],
)
def test_invalid_settings_name_the_variable(overrides: dict[str, str], message: str) -> None:
    error = read_settings({**BASE_ENVIRONMENT, "MODEL_ARTIFACT_URI": "/opt/model", **overrides})
    assert isinstance(error, SettingsError)
    assert message in str(error)
    assert "\n" not in str(error)


def test_invalid_settings_leave_the_app_up_but_not_ready(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_app(env={"SHADOW_FRACTION": "2"})
    assert running.client.get("/health/live").status_code == 200
    ready = running.client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("invalid settings: SHADOW_FRACTION='2'")
    assert running.client.get("/model").status_code == 503
    assert running.client.post("/recommendations", json={"member_id": "m0"}).status_code == 503
    [line] = problems(caplog)
    assert line.startswith("not ready: invalid settings: SHADOW_FRACTION='2': Input should be")


# Loading.


def test_ready_only_once_the_model_is_loaded(start_app: StartApp) -> None:
    release = threading.Event()

    def slow_load(uri: str) -> Ranker:
        release.wait(LOAD_TIMEOUT_SECONDS)
        return load_ranker(uri)

    running = start_app(load_model=slow_load, wait=False)
    ready = running.client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (
        503,
        {"status": "not ready", "reason": "the model is loading"},
    )
    assert running.client.get("/model").status_code == 503
    refused = running.client.post("/recommendations", json={"member_id": "m0"})
    assert (refused.status_code, refused.json()["reason"]) == (503, "the model is loading")
    assert running.client.get("/health/live").status_code == 200
    release.set()
    assert running.service.wait_until_loaded(LOAD_TIMEOUT_SECONDS)
    assert running.client.get("/health/ready").status_code == 200
    assert running.recommend("m1", k=1)["items"][0]["title_id"] == "t2"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(lambda d: (d / "model.pt").unlink(), "lacks model.pt", id="missing-file"),
        pytest.param(
            lambda d: (d / "model.pt").write_bytes(b"not a model"),
            "cannot read model.pt: ",
            id="corrupt-weights",
        ),
        pytest.param(
            lambda d: (d / "id_maps.json").write_text("{"),
            "cannot read id_maps.json: ",
            id="corrupt-json",
        ),
        pytest.param(
            lambda d: (d / "popularity.json").write_text('{"title_positives": {"t0": 1}}'),
            "popularity.json does not give 'title_positives' for exactly the titles",
            id="inconsistent",
        ),
    ],
)
def test_an_unusable_model_keeps_the_service_not_ready_with_one_line(
    start_app: StartApp, model_dir: Path, tmp_path: Path, caplog, damage, reason: str
) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    for path in model_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    damage(broken)
    running = start_app(env={"MODEL_ARTIFACT_URI": str(broken)})
    ready = running.client.get("/health/ready")
    assert ready.status_code == 503
    assert reason in ready.json()["reason"]
    assert running.client.get("/health/live").status_code == 200
    [line] = problems(caplog)
    assert line.startswith(
        f"not ready: cannot load model title-recommender version 7 from {broken}"
    )
    assert reason in line


def test_a_missing_model_folder_is_reported(start_app: StartApp, tmp_path: Path, caplog) -> None:
    running = start_app(env={"MODEL_ARTIFACT_URI": str(tmp_path / "nowhere")})
    assert running.client.get("/health/ready").status_code == 503
    [line] = problems(caplog)
    assert f"model folder {tmp_path / 'nowhere'} lacks model.pt, id_maps.json" in line


def test_the_model_is_downloaded_and_unpacked_from_s3(
    start_app: StartApp, model_dir: Path, s3, caplog
) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=pack(model_dir))
    running = start_app(env={"MODEL_ARTIFACT_URI": f"s3://{BUCKET}/{KEY}"})
    assert running.client.get("/health/ready").status_code == 200
    body = running.recommend("m1", k=100)
    assert [item["title_id"] for item in body["items"]] == PRIMARY_RANKING["m1"]
    assert problems(caplog) == []


def test_a_missing_s3_object_is_reported(start_app: StartApp, s3, caplog) -> None:
    running = start_app(env={"MODEL_ARTIFACT_URI": f"s3://{BUCKET}/models/none/model.tar.gz"})
    assert running.client.get("/health/ready").status_code == 503
    [line] = problems(caplog)
    assert f"cannot download s3://{BUCKET}/models/none/model.tar.gz: " in line


def test_an_archive_escaping_its_folder_is_refused(
    start_app: StartApp, model_dir: Path, s3, tmp_path: Path, caplog
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(model_dir.iterdir()):
            archive.add(path, arcname=path.name)
        payload = b"overwritten"
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=buffer.getvalue())
    running = start_app(env={"MODEL_ARTIFACT_URI": f"s3://{BUCKET}/{KEY}"})
    assert running.client.get("/health/ready").status_code == 503
    [line] = problems(caplog)
    assert f"cannot unpack s3://{BUCKET}/{KEY}: " in line
    assert "outside the destination" in line


def test_a_truncated_archive_is_refused(start_app: StartApp, model_dir: Path, s3, caplog) -> None:
    s3.put_object(Bucket=BUCKET, Key=KEY, Body=pack(model_dir)[:200])
    running = start_app(env={"MODEL_ARTIFACT_URI": f"s3://{BUCKET}/{KEY}"})
    assert running.client.get("/health/ready").status_code == 503
    [line] = problems(caplog)
    assert f"cannot unpack s3://{BUCKET}/{KEY}: " in line


def test_a_candidate_that_cannot_load_leaves_the_primary_serving(
    start_app: StartApp, tmp_path: Path, caplog
) -> None:
    running = start_app(
        env={
            "CANDIDATE_MODEL_VERSION": "8",
            "CANDIDATE_MODEL_ARTIFACT_URI": str(tmp_path / "missing"),
            "SHADOW_FRACTION": "1",
        }
    )
    assert running.client.get("/health/ready").status_code == 200
    info = running.client.get("/model").json()
    assert (info["candidate_version"], info["candidate_loaded"]) == ("8", False)
    assert running.recommend("m1", k=1)["model_version"] == "7"
    [line] = problems(caplog)
    assert line.startswith(f"candidate model 8 not loaded from {tmp_path / 'missing'}: ")


def test_an_unexpected_loading_failure_is_reported_the_same_way(
    start_app: StartApp, caplog: pytest.LogCaptureFixture
) -> None:
    def failing_load(uri: str) -> Ranker:
        raise MemoryError("cannot allocate 12 GB")

    running = start_app(load_model=failing_load)
    assert running.client.get("/health/ready").json()["reason"] == (
        "cannot load model 7: unexpected MemoryError: cannot allocate 12 GB"
    )
    [line] = problems(caplog)
    assert line.endswith(": unexpected MemoryError: cannot allocate 12 GB")
