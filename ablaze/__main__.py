"""The container's entry point: ``python -m ablaze``.

Reads the settings from the environment and serves on all interfaces at ``PORT``. Invalid
settings end the process with one line naming each bad variable, so ECS reports the failed
task with the reason in its log.
"""

from __future__ import annotations

import logging
import os
import sys

import boto3
import uvicorn
from fastapi import FastAPI

from ablaze.api import create_app
from ablaze.registry import approved_model_versions
from ablaze.settings import Settings, SettingsError, load_settings
from ablaze.store import ExperimentStore, ResultStore

# ECS waits 30 s after SIGTERM by default; requests in flight finish first.
GRACEFUL_SHUTDOWN_SECONDS = 20


def production_app(settings: Settings) -> FastAPI:
    """The app over the DynamoDB tables and the model registry that the settings name."""
    dynamodb = boto3.client("dynamodb", region_name=settings.aws_region)
    sagemaker = boto3.client("sagemaker", region_name=settings.aws_region)
    return create_app(
        settings,
        experiments=ExperimentStore(client=dynamodb, table_name=settings.experiments_table),
        results=ResultStore(client=dynamodb, table_name=settings.results_table),
        known_model_versions=lambda: approved_model_versions(
            client=sagemaker, model_package_group=settings.model_package_group
        ),
    )


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        logging.getLogger("ablaze").error("invalid settings: %s", exc)
        return 2
    # The task's network namespace is the container's own; the load balancer reaches it there.
    uvicorn.run(
        production_app(settings),
        host="0.0.0.0",
        port=settings.port,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
