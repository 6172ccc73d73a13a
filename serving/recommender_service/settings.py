"""The service's settings, read once at start-up from environment variables.

Each field is the lower-case name of its variable (``SHADOW_FRACTION`` -> ``shadow_fraction``).
A variable that is empty or ``none`` counts as unset: a task definition sets every variable,
and a CloudFormation parameter cannot be empty, so the stack passes ``none`` for a candidate
it does not have. :func:`read_settings` never raises: it returns either valid
:class:`Settings` or a :class:`SettingsError` whose message names each bad variable and what
it allows, for the one log line the service writes before it reports itself not ready.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Json, ValidationError, model_validator

from ablaze.allocation import DEFAULT_REFRESH_SECONDS
from ablaze.experiments import SLUG_PATTERN

DEFAULT_PORT = 8080
# The port OpenTelemetry's Prometheus exporters default to.
DEFAULT_METRICS_PORT = 9464
DEFAULT_METRICS_NAMESPACE = "MLPlatform/Serving"
UNSET_VALUES = ("", "none")
_S3_BUCKET = r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/"
_S3_TARBALL = re.compile(_S3_BUCKET + r"(?P<key>.+\.tar\.gz)")
# A key prefix of whole folders: empty, or names that each end with a slash.
_S3_FOLDER = re.compile(_S3_BUCKET + r"(?P<prefix>([^/\s]+/)*)")

Text = Annotated[str, Field(min_length=1, max_length=128)]


class SettingsError(ValueError):
    """Invalid settings; the message is one line naming the variables and what they allow."""


class Settings(BaseModel):
    """The validated environment of the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: Text
    model_version: Text
    model_artifact_uri: Annotated[str, Field(min_length=1, max_length=1024)]
    # Shown as given: the registry's date, or whatever the stack passes when it has none.
    model_training_date: Annotated[str, Field(max_length=64)] | None = None
    model_package_arn: Annotated[str, Field(max_length=2048)] | None = None
    # The registry's figures for the version; when unset, those of the artifact's metrics.json.
    model_metrics: Json[dict[str, float]] | None = None
    candidate_model_version: Text | None = None
    candidate_model_artifact_uri: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    shadow_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    # Keyspaces names: a letter, then letters, digits and underscores, 48 characters at most.
    keyspace: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")] | None = None
    aws_region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")] | None = None
    feature_group_name: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9]([-_]*[A-Za-z0-9]){0,63}$")] | None
    ) = None
    metrics_namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./#:-]{1,255}$")] = (
        DEFAULT_METRICS_NAMESPACE
    )
    store_timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 50
    port: Annotated[int, Field(ge=1, le=65_535)] = DEFAULT_PORT
    # Prometheus metrics, on a port of their own that the load balancer does not route to.
    metrics_port: Annotated[int, Field(ge=1, le=65_535)] = DEFAULT_METRICS_PORT
    # Where every prediction record is also appended, for model monitoring; unset: nowhere.
    prediction_log_uri: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    prediction_log_flush_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # The path every route is under, e.g. /title-recommender behind a load balancer rule
    # that forwards /title-recommender/* without stripping it.
    url_prefix: Annotated[str, Field(pattern=r"^(/[A-Za-z0-9._~-]+)*$", max_length=256)] = ""
    # ABlaze's experiments table, and the surface whose running experiments assign members.
    experiments_table: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")] | None = None
    experiment_surface: Annotated[str, Field(pattern=SLUG_PATTERN)] | None = None
    experiments_refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = DEFAULT_REFRESH_SECONDS

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = [
            *_uri_problems("MODEL_ARTIFACT_URI", self.model_artifact_uri),
            *_uri_problems("CANDIDATE_MODEL_ARTIFACT_URI", self.candidate_model_artifact_uri),
        ]
        if (self.candidate_model_version is None) != (self.candidate_model_artifact_uri is None):
            problems.append(
                "CANDIDATE_MODEL_VERSION and CANDIDATE_MODEL_ARTIFACT_URI must be set together"
            )
        if self.candidate_model_version == self.model_version:
            problems.append("CANDIDATE_MODEL_VERSION must differ from MODEL_VERSION")
        if self.prediction_log_uri is not None and split_s3_folder(self.prediction_log_uri) is None:
            problems.append(
                f"PREDICTION_LOG_URI={self.prediction_log_uri!r} must be s3://<bucket>/<prefix>/,"
                " ending with /"
            )
        if self.metrics_port == self.port:
            problems.append("METRICS_PORT must differ from PORT")
        if self.metrics_namespace.startswith("AWS/"):
            problems.append("METRICS_NAMESPACE must not start with AWS/, which AWS reserves")
        if self.shadow_fraction > 0 and self.candidate_model_version is None:
            problems.append("SHADOW_FRACTION above 0 needs a candidate model")
        if (self.experiments_table is None) != (self.experiment_surface is None):
            problems.append("EXPERIMENTS_TABLE and EXPERIMENT_SURFACE must be set together")
        for name, value in (
            ("KEYSPACE", self.keyspace),
            ("FEATURE_GROUP_NAME", self.feature_group_name),
            ("EXPERIMENTS_TABLE", self.experiments_table),
        ):
            if value is not None and self.aws_region is None:
                problems.append(f"{name} needs AWS_REGION")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def store_timeout_seconds(self) -> float:
        return self.store_timeout_ms / 1000

    @property
    def prediction_log_location(self) -> tuple[str, str] | None:
        """``(bucket, prefix)`` of ``PREDICTION_LOG_URI``, or None when it is unset."""
        return split_s3_folder(self.prediction_log_uri) if self.prediction_log_uri else None


def read_settings(environ: Mapping[str, str]) -> Settings | SettingsError:
    """Validate the variables of ``environ`` that name a field of :class:`Settings`."""
    values = {
        name: environ[name.upper()]
        for name in Settings.model_fields
        if environ.get(name.upper(), "").strip().lower() not in UNSET_VALUES
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        return SettingsError("; ".join(_describe(error, values) for error in exc.errors()))


def listen_port(settings: Settings | SettingsError) -> int:
    """The port to serve on: ``PORT``, or the default when the settings are invalid."""
    return settings.port if isinstance(settings, Settings) else DEFAULT_PORT


def split_s3_uri(uri: str) -> tuple[str, str] | None:
    """Return ``(bucket, key)`` of an ``s3://bucket/key.tar.gz`` URI, or None for a path."""
    match = _S3_TARBALL.fullmatch(uri)
    return (match["bucket"], match["key"]) if match else None


def split_s3_folder(uri: str) -> tuple[str, str] | None:
    """Return ``(bucket, prefix)`` of an ``s3://bucket/prefix/`` URI, or None for another."""
    match = _S3_FOLDER.fullmatch(uri)
    return (match["bucket"], match["prefix"]) if match else None


def _uri_problems(variable: str, uri: str | None) -> list[str]:
    if uri is None or not uri.startswith("s3://") or split_s3_uri(uri) is not None:
        return []
    return [f"{variable}={uri!r} must be s3://<bucket>/<key>.tar.gz or a local folder"]


def _describe(error: dict, values: Mapping[str, str]) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    field = str(error["loc"][0])
    variable = field.upper()
    if field not in values:
        return f"{variable} is required"
    return f"{variable}={values[field]!r}: {message}"
