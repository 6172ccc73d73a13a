"""Creates or updates the metadata service's own database user: the ``Custom::MetaflowDatabaseUser``
resource of ``MetaflowMetadataService``, dispatched here by ``handler.py``.

The service never holds the master credentials. A one-off ECS task of the service's own image
(which has Python and psycopg2) runs ``create_service_user.py`` from this folder as the master
user, and the service's tasks start only after it succeeded. This module starts that task and
waits for it, so a user that could not be made fails the deploy before the service changes.

ResourceProperties: ``Cluster`` (ARN), ``TaskDefinition`` (ARN of the one-off task's revision:
a new image or a new secret is a new revision, hence a new run), ``Subnets`` and
``SecurityGroups`` (ids for the task's network interface) and ``ContainerName``.

Create and Update: RunTask (Fargate, no public IP), then DescribeTasks every few seconds until
the task is STOPPED; the container's exit code must be 0. Returns
``{"PhysicalResourceId": "metaflow-db-service-user", "Data": {"TaskArn"}}``. Delete calls
nothing: the user lives and dies with the database.

Errors: ``DatabaseUserError`` (the task could not start, or stopped with another exit code;
the message holds ECS's reasons), ``DatabaseUserTimeoutError`` (still running when the wait
ran out), ``ValueError`` (a missing property).

IAM: ecs:RunTask on the task definition, iam:PassRole on its roles, ecs:DescribeTasks on the
cluster's tasks.
"""

from __future__ import annotations

import time
from typing import Any

PHYSICAL_RESOURCE_ID = "metaflow-db-service-user"
POLL_SECONDS = 5.0
# Kept free of the wait: the last DescribeTasks and the reply to CloudFormation.
RESERVED_SECONDS = 15.0
REQUIRED_PROPERTIES = ("Cluster", "TaskDefinition", "Subnets", "SecurityGroups", "ContainerName")


class DatabaseUserError(RuntimeError):
    """The one-off task did not make the user; the message says what ECS reported."""


class DatabaseUserTimeoutError(RuntimeError):
    """The one-off task was still running when the wait ran out."""


def _checked(properties: dict[str, Any]) -> dict[str, Any]:
    missing = [name for name in REQUIRED_PROPERTIES if not properties.get(name)]
    if missing:
        raise ValueError(f"missing ResourceProperties: {', '.join(missing)}")
    return properties


def _start(ecs: Any, properties: dict[str, Any]) -> str:
    response = ecs.run_task(
        cluster=properties["Cluster"],
        taskDefinition=properties["TaskDefinition"],
        launchType="FARGATE",
        count=1,
        startedBy="cfn-metaflow-db-user",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": list(properties["Subnets"]),
                "securityGroups": list(properties["SecurityGroups"]),
                "assignPublicIp": "DISABLED",
            }
        },
    )
    if response.get("failures") or not response.get("tasks"):
        raise DatabaseUserError(f"the task could not be started: {response.get('failures')}")
    return response["tasks"][0]["taskArn"]


def _wait_until_stopped(ecs: Any, cluster: str, task_arn: str, max_wait: float) -> dict:
    deadline = time.monotonic() + max_wait
    while True:
        (task,) = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"]
        if task["lastStatus"] == "STOPPED":
            return task
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DatabaseUserTimeoutError(
                f"task {task_arn} was still {task['lastStatus']} after {max_wait:g} s"
            )
        time.sleep(min(POLL_SECONDS, remaining))


def _check_exit(task: dict[str, Any], container_name: str) -> None:
    (container,) = [c for c in task.get("containers", []) if c.get("name") == container_name]
    if container.get("exitCode") == 0:
        return
    raise DatabaseUserError(
        f"task {task['taskArn']} stopped with exit code {container.get('exitCode')} "
        f"(stopped reason: {task.get('stoppedReason') or 'none'}; container reason: "
        f"{container.get('reason') or 'none'}); its output is in the metadata service's log "
        "group under the db-user prefix"
    )


def create_or_update(ecs: Any, properties: dict[str, Any], max_wait: float) -> dict[str, Any]:
    """Runs the task that makes the user and returns the custom resource's answer."""
    properties = _checked(properties)
    task_arn = _start(ecs, properties)
    task = _wait_until_stopped(ecs, properties["Cluster"], task_arn, max_wait)
    _check_exit(task, properties["ContainerName"])
    return {"PhysicalResourceId": PHYSICAL_RESOURCE_ID, "Data": {"TaskArn": task_arn}}
