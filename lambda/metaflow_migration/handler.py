"""The deploy-time steps of the Metaflow metadata database: its service user, then its schema.

The on_event handler of the CDK custom-resource ``Provider`` of two resource types, told apart
by ``ResourceType``:

- ``Custom::MetaflowDatabaseUser``: ``database_user.py`` beside this file runs the one-off
  ECS task that creates or updates the service's own database user (the function needs no
  VPC access, only the ECS API); see that module.
- ``Custom::MetaflowSchemaMigration``: brings the schema up to date, as described below.

Any other ResourceType raises ``ValueError``.

For the schema migration it talks to the migration service of
``netflixoss/metaflow_metadata_service`` (Netflix/metaflow-service,
``services/migration_service/api/admin.py``), whose API it relies on as follows:

- ``GET /db_schema_status`` answers 200 with a JSON body holding ``is_up_to_date`` (bool:
  no unapplied migrations), ``current_version`` (the goose version, a string such as
  "20240509201906") and ``unapplied_migrations`` (list of version strings), among others;
  it answers 500 with ``{"detail": ...}`` when it cannot read the version (for instance
  while the database is unreachable). Older releases send that JSON without a JSON content
  type, so the body is parsed whatever the header says.
- ``PATCH /upgrade`` runs ``goose up`` to completion before answering: 200 "upgrade success"
  or 500 "upgrade failed". It only exists while MF_MIGRATION_ENDPOINTS_ENABLED is not 0.

Environment: ``MIGRATION_URL`` (e.g. ``http://internal-nlb-dns:8082``, schema migration
only) and ``MAX_WAIT_SECONDS`` (default 600), how long to wait for the service to answer or
the database user's task to stop.

Create and Update: wait, retrying with capped exponential backoff, until the status endpoint
answers (the ECS service may still be starting, or its database not yet reachable); if the
schema is behind, PATCH the upgrade and read the status again. A schema still behind, a
failed upgrade or a service that never answers raises, which fails the deploy on purpose.
Returns ``{"PhysicalResourceId": "metaflow-db-schema", "Data": {"CurrentVersion",
"Upgraded"}}`` (strings, readable with GetAtt).

Delete: calls nothing (the schema outlives the stack's resources) and returns the same
PhysicalResourceId.

The wait is also cut short so that the upgrade (up to 240 s), the second status read and the
reply to CloudFormation still fit in the function's remaining time: with a 12-minute timeout
the service gets min(MAX_WAIT_SECONDS, 440 s) to answer.

Errors: ``MigrationError`` (the schema is behind after the upgrade, the upgrade answered an
error, or the service answered something unexpected), ``ServiceUnavailableError`` (no answer
within the wait), ``ValueError`` (unknown ResourceType or RequestType, bad
MAX_WAIT_SECONDS).

IAM: none for the schema migration, which needs network access to the service's migration
port; the database user's function gets the ECS permissions ``database_user.py`` names.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import database_user
from aws_lambda_powertools import Logger

SCHEMA_MIGRATION = "Custom::MetaflowSchemaMigration"
DATABASE_USER = "Custom::MetaflowDatabaseUser"
PHYSICAL_RESOURCE_ID = "metaflow-db-schema"
DEFAULT_MAX_WAIT_SECONDS = 600.0
STATUS_TIMEOUT_SECONDS = 15.0
# goose applies every pending migration inside the request; an index build on a large table
# takes minutes.
UPGRADE_TIMEOUT_SECONDS = 240.0
INITIAL_BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 30.0
# Kept free of the wait: the upgrade, the second status read and the reply to CloudFormation.
RESERVED_SECONDS = UPGRADE_TIMEOUT_SECONDS + 2 * STATUS_TIMEOUT_SECONDS + 10.0

logger = Logger(service="metaflow-migration")
# The service sits behind an internal load balancer in the VPC and is reached directly, never
# through a proxy taken from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
ecs = boto3.client("ecs")


class MigrationError(RuntimeError):
    """The schema could not be brought up to date; the message holds the service's answer."""


class ServiceUnavailableError(RuntimeError):
    """The migration service did not answer within the allowed time."""


class _RetryableError(Exception):
    """A failure that a service still starting up can cause: retried until the deadline."""


def _request(method: str, url: str, timeout: float) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "PATCH" else None)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise _RetryableError(f"{method} {url}: {error}") from error


def _status(base_url: str) -> tuple[dict[str, Any], str]:
    """The parsed status and the body as the service sent it."""
    url = f"{base_url}/db_schema_status"
    code, body = _request("GET", url, STATUS_TIMEOUT_SECONDS)
    if code >= 500:
        raise _RetryableError(f"GET {url} answered HTTP {code}: {body}")
    if code != 200:
        raise MigrationError(f"GET {url} answered HTTP {code}: {body}")
    try:
        status = json.loads(body)
    except json.JSONDecodeError:
        raise MigrationError(f"GET {url} answered something other than JSON: {body}") from None
    if not isinstance(status, dict) or not isinstance(status.get("is_up_to_date"), bool):
        raise MigrationError(f"GET {url} answered without a boolean is_up_to_date: {body}")
    return status, body


def _wait_for_status(base_url: str, max_wait: float) -> tuple[dict[str, Any], str]:
    deadline = time.monotonic() + max_wait
    backoff = INITIAL_BACKOFF_SECONDS
    attempt = 1
    while True:
        try:
            return _status(base_url)
        except _RetryableError as error:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceUnavailableError(
                    f"the migration service at {base_url} did not answer within "
                    f"{max_wait:g} s ({attempt} attempts); last error: {error}"
                ) from None
            logger.info(
                "Migration service not ready", extra={"attempt": attempt, "error": str(error)}
            )
            time.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            attempt += 1


def _wait_budget(context: Any, reserved_seconds: float) -> float:
    raw = os.environ.get("MAX_WAIT_SECONDS") or str(DEFAULT_MAX_WAIT_SECONDS)
    try:
        max_wait = float(raw)
    except ValueError:
        max_wait = math.nan
    if not 0 <= max_wait < math.inf:
        raise ValueError(f"MAX_WAIT_SECONDS must be a non-negative number of seconds, got {raw!r}")
    remaining = context.get_remaining_time_in_millis() / 1000 - reserved_seconds
    return max(0.0, min(max_wait, remaining))


def _result(status: dict[str, Any], *, upgraded: bool) -> dict[str, Any]:
    return {
        "PhysicalResourceId": PHYSICAL_RESOURCE_ID,
        "Data": {
            "CurrentVersion": str(status.get("current_version")),
            "Upgraded": "true" if upgraded else "false",
        },
    }


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    resource_type = event.get("ResourceType")
    if resource_type not in (SCHEMA_MIGRATION, DATABASE_USER):
        raise ValueError(f"unknown ResourceType {resource_type!r}")
    request_type = event.get("RequestType")
    if request_type == "Delete":
        if resource_type == DATABASE_USER:
            return {"PhysicalResourceId": database_user.PHYSICAL_RESOURCE_ID}
        return {"PhysicalResourceId": PHYSICAL_RESOURCE_ID}
    if request_type not in ("Create", "Update"):
        raise ValueError(f"unknown RequestType {request_type!r}")
    if resource_type == DATABASE_USER:
        max_wait = _wait_budget(context, database_user.RESERVED_SECONDS)
        result = database_user.create_or_update(
            ecs, event.get("ResourceProperties") or {}, max_wait
        )
        logger.info("Database user ready", extra={"task_arn": result["Data"]["TaskArn"]})
        return result
    return _migrate(_wait_budget(context, RESERVED_SECONDS))


def _migrate(max_wait: float) -> dict[str, Any]:
    base_url = os.environ["MIGRATION_URL"].rstrip("/")
    status, _ = _wait_for_status(base_url, max_wait)
    if status["is_up_to_date"]:
        logger.info("Schema up to date", extra={"current_version": status.get("current_version")})
        return _result(status, upgraded=False)

    logger.info(
        "Upgrading schema",
        extra={
            "current_version": status.get("current_version"),
            "unapplied_migrations": status.get("unapplied_migrations"),
        },
    )
    upgrade_url = f"{base_url}/upgrade"
    try:
        code, body = _request("PATCH", upgrade_url, UPGRADE_TIMEOUT_SECONDS)
    except _RetryableError as error:
        # Not retried: the upgrade may still be running on the service side.
        raise MigrationError(f"the upgrade request failed: {error}") from None
    if code != 200:
        raise MigrationError(f"PATCH {upgrade_url} answered HTTP {code}: {body}")

    try:
        status, body = _status(base_url)
    except _RetryableError as error:
        raise MigrationError(f"the status after the upgrade could not be read: {error}") from None
    if not status["is_up_to_date"]:
        raise MigrationError(f"the schema is still not up to date after the upgrade: {body}")
    logger.info("Schema upgraded", extra={"current_version": status.get("current_version")})
    return _result(status, upgraded=True)
