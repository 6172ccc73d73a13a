"""The Flink job keeper against moto's EMR and CloudWatch and a local HTTP server standing in
for the YARN ResourceManager REST API of the cluster's primary node."""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from moto.emr.models import emr_backends

from tests.lambdas.conftest import ACCOUNT_ID, REGION

JOB = "raw-ingest"
CLUSTER_NAME = "ml-platform-dev-flink"
NAMESPACE = "MLPlatform/Streaming"
STEP_ARGS = ["flink", "run", "-m", "yarn-cluster", "-d", "-ynm", JOB, "-pym", "jobs.x"]
APPS_PATH = "/ws/v1/cluster/apps"


@dataclass
class FakeResourceManager:
    """Answers GET /ws/v1/cluster/apps as YARN does: {"apps": {"app": [...]}}, or
    {"apps": null} when nothing matches."""

    running: list[str] = field(default_factory=list)  # names of RUNNING applications
    answer: tuple[int, str] | None = None  # (status, body) instead of the applications
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    port: int = 0

    def respond(self, path: str) -> tuple[int, str]:
        url = urllib.parse.urlsplit(path)
        if url.path != APPS_PATH:
            return 404, "not found"
        self.queries.append(urllib.parse.parse_qs(url.query))
        if self.answer is not None:
            return self.answer
        apps = [
            {
                "id": f"application_1700000000000_{index:04d}",
                "name": name,
                "state": "RUNNING",
                "applicationType": "Apache Flink",
            }
            for index, name in enumerate(self.running, start=1)
        ]
        return 200, json.dumps({"apps": {"app": apps} if apps else None})


@pytest.fixture
def resource_manager() -> Iterator[FakeResourceManager]:
    manager = FakeResourceManager()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body = manager.respond(self.path)
            payload = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    manager.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    yield manager
    server.shutdown()
    server.server_close()


@pytest.fixture
def cluster_id(aws_client, monkeypatch) -> str:
    emr = aws_client("emr")
    cluster = emr.run_job_flow(
        Name=CLUSTER_NAME,
        ReleaseLabel="emr-7.13.0",
        Instances={
            "MasterInstanceType": "m7g.xlarge",
            "SlaveInstanceType": "m7g.xlarge",
            "InstanceCount": 2,
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    # The primary node's private DNS name, as describe_cluster reports it, resolves to the
    # local stand-in (EMR's own names resolve only inside the VPC).
    primary = emr.describe_cluster(ClusterId=cluster)["Cluster"]["MasterPublicDnsName"]
    resolve = socket.getaddrinfo

    def local(host, *args, **kwargs):
        return resolve("127.0.0.1" if host == primary else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local)
    return cluster


@pytest.fixture
def keeper(
    cluster_id, resource_manager, load_handler, monkeypatch, lambda_context
) -> Callable[[], dict]:
    """One scheduled run of the keeper; returns its result."""
    for name, value in {
        "CLUSTER_ID": cluster_id,
        "CLUSTER_NAME": CLUSTER_NAME,
        "JOB_NAME": JOB,
        "STEP_ARGS": json.dumps(STEP_ARGS),
        "RESOURCE_MANAGER_PORT": str(resource_manager.port),
        "METRIC_NAMESPACE": NAMESPACE,
    }.items():
        monkeypatch.setenv(name, value)
    module = load_handler("flink_job_keeper")
    return lambda: module.handler({"source": "scheduler"}, lambda_context)


def steps(aws_client, cluster_id) -> list[dict]:
    return aws_client("emr").list_steps(ClusterId=cluster_id)["Steps"]


def set_step_states(cluster_id: str, *states: str) -> None:
    """Give the cluster's steps, oldest first, these states (moto never finishes a step)."""
    cluster = emr_backends[ACCOUNT_ID][REGION].clusters[cluster_id]
    for step, state in zip(cluster.steps, states, strict=True):
        step.state = state


def add_submissions(aws_client, cluster_id, count: int) -> None:
    for _ in range(count):
        aws_client("emr").add_job_flow_steps(
            JobFlowId=cluster_id,
            Steps=[
                {
                    "Name": JOB,
                    "ActionOnFailure": "CONTINUE",
                    "HadoopJarStep": {"Jar": "command-runner.jar", "Args": STEP_ARGS},
                }
            ],
        )


def published(aws_client) -> list[float]:
    """[number of FlinkJobRunning datapoints, their sum] published for the job so far."""
    now = datetime.now(UTC)
    metric = {
        "Namespace": NAMESPACE,
        "MetricName": "FlinkJobRunning",
        "Dimensions": [
            {"Name": "ClusterName", "Value": CLUSTER_NAME},
            {"Name": "JobName", "Value": JOB},
        ],
    }
    answer = aws_client("cloudwatch").get_metric_data(
        MetricDataQueries=[
            {"Id": stat.lower(), "MetricStat": {"Metric": metric, "Period": 60, "Stat": stat}}
            for stat in ("SampleCount", "Sum")
        ],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
    )["MetricDataResults"]
    values = {result["Id"]: sum(result["Values"]) for result in answer}
    return [values["samplecount"], values["sum"]]


def test_a_running_job_is_left_alone(keeper, resource_manager, aws_client, cluster_id):
    resource_manager.running = ["some-other-flink-job", JOB]

    assert keeper() == {"outcome": "running", "running": True}

    assert steps(aws_client, cluster_id) == []
    assert published(aws_client) == [1, 1]  # one datapoint, value 1
    (query,) = resource_manager.queries
    assert query == {"states": ["RUNNING,ACCEPTED"], "applicationTypes": ["Apache Flink"]}


def test_a_job_that_is_not_running_is_resubmitted_once(
    keeper, resource_manager, aws_client, cluster_id
):
    resource_manager.running = ["some-other-flink-job"]

    result = keeper()

    (step,) = steps(aws_client, cluster_id)
    assert result == {"outcome": "submitted", "running": False, "step_id": step["Id"]}
    assert step["Name"] == JOB
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["Config"]["Jar"] == "command-runner.jar"
    assert step["Config"]["Args"] == STEP_ARGS
    assert published(aws_client) == [1, 0]


def test_no_application_at_all_is_not_running(keeper, resource_manager, aws_client, cluster_id):
    # YARN answers {"apps": null} when no application matches.
    assert keeper()["outcome"] == "submitted"
    assert len(steps(aws_client, cluster_id)) == 1


def test_repeated_runs_do_not_submit_while_a_submission_is_under_way(
    keeper, aws_client, cluster_id
):
    first = keeper()
    second = keeper()  # moto keeps the first submission RUNNING

    assert first["outcome"] == "submitted"
    assert second == {"outcome": "submission-pending", "running": False}
    assert len(steps(aws_client, cluster_id)) == 1
    assert published(aws_client) == [2, 0]


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "CANCEL_PENDING"])
def test_a_pending_submission_stops_a_resubmission(keeper, aws_client, cluster_id, state):
    add_submissions(aws_client, cluster_id, 1)
    set_step_states(cluster_id, state)

    assert keeper()["outcome"] == "submission-pending"
    assert len(steps(aws_client, cluster_id)) == 1


def test_a_job_that_stopped_after_its_submission_completed_is_resubmitted(
    keeper, aws_client, cluster_id
):
    add_submissions(aws_client, cluster_id, 1)
    set_step_states(cluster_id, "COMPLETED")

    assert keeper()["outcome"] == "submitted"
    assert len(steps(aws_client, cluster_id)) == 2


def test_three_failed_submissions_in_a_row_hold_resubmission(
    keeper, aws_client, cluster_id, caplog
):
    add_submissions(aws_client, cluster_id, 4)
    set_step_states(cluster_id, "COMPLETED", "FAILED", "FAILED", "FAILED")

    assert keeper() == {"outcome": "submissions-failing", "running": False}

    assert len(steps(aws_client, cluster_id)) == 4
    assert published(aws_client) == [1, 0]
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage() == "Job not running and its last submissions failed; not resubmitting"


def test_fewer_failures_than_the_hold_still_resubmit(keeper, aws_client, cluster_id):
    add_submissions(aws_client, cluster_id, 3)
    set_step_states(cluster_id, "FAILED", "COMPLETED", "FAILED")

    assert keeper()["outcome"] == "submitted"


@pytest.mark.parametrize(
    "answer",
    [(500, "ResourceManager starting"), (200, "<html>not json</html>"), (200, '{"apps": 3}')],
)
def test_an_unreadable_resource_manager_gets_no_blind_resubmission(
    keeper, resource_manager, aws_client, cluster_id, caplog, answer
):
    resource_manager.answer = answer

    assert keeper() == {"outcome": "resource-manager-unavailable", "running": False}

    assert steps(aws_client, cluster_id) == []
    assert published(aws_client) == [1, 0]
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.getMessage() == "ResourceManager unavailable; not resubmitting blindly"


def test_an_unreachable_resource_manager_gets_no_blind_resubmission(
    keeper, resource_manager, aws_client, cluster_id, monkeypatch, caplog
):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("RESOURCE_MANAGER_PORT", str(probe.getsockname()[1]))

    assert keeper()["outcome"] == "resource-manager-unavailable"

    assert steps(aws_client, cluster_id) == []
    assert published(aws_client) == [1, 0]
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "Connection refused" in error.error


def test_a_terminated_cluster_is_reported_not_asked(
    keeper, resource_manager, aws_client, cluster_id
):
    aws_client("emr").terminate_job_flows(JobFlowIds=[cluster_id])

    assert keeper() == {"outcome": "cluster-unavailable", "running": False}

    assert resource_manager.queries == []
    assert steps(aws_client, cluster_id) == []
    assert published(aws_client) == [1, 0]


def test_two_copies_running_count_as_running_and_are_reported(keeper, resource_manager, caplog):
    resource_manager.running = [JOB, JOB]

    assert keeper()["outcome"] == "running"

    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == "More than one copy of the job runs"
    assert len(warning.applications) == 2
