"""Keeps the detached streaming job running on its Flink cluster; run every few minutes.

Each run asks what is true and acts at most once:

1. ``emr:DescribeCluster``: the cluster's state and its primary node's private DNS name.
   A cluster that is not RUNNING or WAITING takes no steps: nothing is submitted.
2. The YARN ResourceManager's REST API on the primary node
   (``/ws/v1/cluster/apps?states=RUNNING,ACCEPTED&applicationTypes=Apache Flink``): the job
   runs when an application named ``JOB_NAME`` is listed.
3. Not running: ``emr:ListSteps`` (the newest page). When a step named ``JOB_NAME`` is
   PENDING or RUNNING, a submission is under way and nothing is added (so repeated runs are
   idempotent). When the newest ``MAX_FAILED_SUBMISSIONS`` submissions all FAILED, the job
   cannot start as configured: nothing is added until a person fixes it (a manual
   ``aws emr add-steps`` of the same step that succeeds ends the hold). Otherwise one step
   with ``STEP_ARGS`` is added (``command-runner.jar``, ActionOnFailure CONTINUE).

Every run publishes ``FlinkJobRunning`` (1 or 0) in ``METRIC_NAMESPACE`` with the dimensions
``ClusterName`` and ``JobName``; an alarm on it (missing data breaching) tells a person when
the job stays down or this function stops reporting.

A ResourceManager that does not answer (or answers something unreadable) counts as "not
known to run": the metric is 0 and the error is logged, but nothing is resubmitted. The job
may well be running, and a second copy would read the topic again and write every event
twice; the alarm brings a person instead of a blind resubmission every few minutes.

Environment: ``CLUSTER_ID``, ``CLUSTER_NAME``, ``JOB_NAME`` (the EMR step name and the YARN
application name), ``STEP_ARGS`` (JSON list of the step's arguments),
``RESOURCE_MANAGER_PORT`` and ``METRIC_NAMESPACE``.

Returns ``{"outcome": ..., "running": bool}`` plus ``step_id`` when it submitted; outcomes:
``running``, ``submitted``, ``submission-pending``, ``submissions-failing``,
``cluster-unavailable``, ``resource-manager-unavailable``. AWS API errors are raised (the
missing metric then breaches the alarm).

IAM: ``elasticmapreduce:DescribeCluster``, ``ListSteps``, ``AddJobFlowSteps`` on the cluster;
``cloudwatch:PutMetricData`` in the namespace. Network: the ResourceManager port of the
primary node, and the AWS APIs.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import boto3
from aws_lambda_powertools import Logger

FLINK_APPLICATION_TYPE = "Apache Flink"
ACTIVE_CLUSTER_STATES = ("RUNNING", "WAITING")
ACTIVE_STEP_STATES = ("PENDING", "RUNNING", "CANCEL_PENDING")
MAX_FAILED_SUBMISSIONS = 3
RESOURCE_MANAGER_TIMEOUT_SECONDS = 10
METRIC_NAME = "FlinkJobRunning"

logger = Logger(service="flink-job-keeper")
emr = boto3.client("emr")
cloudwatch = boto3.client("cloudwatch")
# The primary node is reached directly inside the VPC, never through a proxy.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ResourceManagerUnavailableError(RuntimeError):
    """The ResourceManager did not answer, or not with the applications list."""


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    cluster_id = os.environ["CLUSTER_ID"]
    job_name = os.environ["JOB_NAME"]
    result = _keep_running(cluster_id, job_name)
    _publish(running=result["running"])
    return result


def _keep_running(cluster_id: str, job_name: str) -> dict[str, Any]:
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    state = cluster["Status"]["State"]
    if state not in ACTIVE_CLUSTER_STATES:
        logger.error("Cluster cannot run the job", extra={"cluster_state": state})
        return {"outcome": "cluster-unavailable", "running": False}
    try:
        applications = _flink_applications(cluster["MasterPublicDnsName"], job_name)
    except ResourceManagerUnavailableError as error:
        logger.error(
            "ResourceManager unavailable; not resubmitting blindly", extra={"error": str(error)}
        )
        return {"outcome": "resource-manager-unavailable", "running": False}
    if applications:
        if len(applications) > 1:
            logger.warning(
                "More than one copy of the job runs", extra={"applications": applications}
            )
        return {"outcome": "running", "running": True}
    return _submit_unless_pending(cluster_id, job_name)


def _flink_applications(host: str, job_name: str) -> list[str]:
    """Ids of the running or accepted Flink applications named `job_name`."""
    query = urllib.parse.urlencode(
        {"states": "RUNNING,ACCEPTED", "applicationTypes": FLINK_APPLICATION_TYPE},
        quote_via=urllib.parse.quote,
    )
    url = f"http://{host}:{os.environ['RESOURCE_MANAGER_PORT']}/ws/v1/cluster/apps?{query}"
    try:
        with opener.open(url, timeout=RESOURCE_MANAGER_TIMEOUT_SECONDS) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise ResourceManagerUnavailableError(f"GET {url}: {error}") from None
    try:
        listed = (answer["apps"] or {}).get("app", [])
        return [app["id"] for app in listed if app["name"] == job_name]
    except (KeyError, TypeError, AttributeError):
        raise ResourceManagerUnavailableError(f"GET {url}: not an applications list") from None


def _submit_unless_pending(cluster_id: str, job_name: str) -> dict[str, Any]:
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]  # newest first
    submissions = [step for step in steps if step["Name"] == job_name]
    pending = [s["Id"] for s in submissions if s["Status"]["State"] in ACTIVE_STEP_STATES]
    if pending:
        logger.info("Job not running yet; its submission is under way", extra={"steps": pending})
        return {"outcome": "submission-pending", "running": False}
    newest = submissions[:MAX_FAILED_SUBMISSIONS]
    if len(newest) == MAX_FAILED_SUBMISSIONS and all(
        step["Status"]["State"] == "FAILED" for step in newest
    ):
        logger.error(
            "Job not running and its last submissions failed; not resubmitting",
            extra={"failed_steps": [step["Id"] for step in newest]},
        )
        return {"outcome": "submissions-failing", "running": False}
    (step_id,) = emr.add_job_flow_steps(
        JobFlowId=cluster_id,
        Steps=[
            {
                "Name": job_name,
                "ActionOnFailure": "CONTINUE",
                "HadoopJarStep": {
                    "Jar": "command-runner.jar",
                    "Args": json.loads(os.environ["STEP_ARGS"]),
                },
            }
        ],
    )["StepIds"]
    logger.warning("Job not running; resubmitted", extra={"step_id": step_id})
    return {"outcome": "submitted", "running": False, "step_id": step_id}


def _publish(*, running: bool) -> None:
    cloudwatch.put_metric_data(
        Namespace=os.environ["METRIC_NAMESPACE"],
        MetricData=[
            {
                "MetricName": METRIC_NAME,
                "Dimensions": [
                    {"Name": "ClusterName", "Value": os.environ["CLUSTER_NAME"]},
                    {"Name": "JobName", "Value": os.environ["JOB_NAME"]},
                ],
                "Value": 1 if running else 0,
                "Unit": "Count",
            }
        ],
    )
