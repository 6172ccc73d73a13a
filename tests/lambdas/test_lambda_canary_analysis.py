"""The canary analysis lifecycle hook against moto (ECS task definitions, CloudWatch metrics).

moto 5.2 implements neither ``ecs:DescribeServiceRevisions`` nor percentile statistics in
``cloudwatch:GetMetricData``; the first is served by a botocore Stubber for that one
operation (every other call of the client still goes to moto), and the p99 path is checked
against a Stubber for GetMetricData while the other tests ask moto for Averages.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import random
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

FOLDER = Path(__file__).resolve().parents[2] / "lambda" / "canary_analysis"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
CLUSTER = "ml-serving"
SERVICE = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service/{CLUSTER}/recommender"
BLUE = (
    f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service-revision/{CLUSTER}/recommender/1920498462936580504"
)
GREEN = (
    f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service-revision/{CLUSTER}/recommender/9313423515462893900"
)
DEPLOYMENT = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service-deployment/{CLUSTER}/recommender/EZe5RN"
LOAD_BALANCER = "app/serving/50dc6c495c0c9188"
BLUE_TG_NAME = "targetgroup/serving-blue/0123456789abcdef"
GREEN_TG_NAME = "targetgroup/serving-green/fedcba9876543210"
BLUE_TG = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT_ID}:{BLUE_TG_NAME}"
GREEN_TG = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT_ID}:{GREEN_TG_NAME}"
MODEL = "recommender"
# The canary step began at STARTED; the window runs from 10:01 on whole minutes.
STARTED = dt.datetime(2026, 11, 28, 10, 0, 30, tzinfo=dt.UTC)
WINDOW_START = dt.datetime(2026, 11, 28, 10, 1, tzinfo=dt.UTC)


class OperationStub(Stubber):
    """A botocore Stubber that answers one operation and lets every other call of the client
    go on to moto (a plain Stubber answers, or refuses, all of them)."""

    def __init__(self, client: Any, operation_name: str) -> None:
        super().__init__(client)
        service = client.meta.service_model.service_id.hyphenize()
        self._events = (
            (f"before-parameter-build.{service}.{operation_name}", self._assert_expected_params),
            (f"before-call.{service}.{operation_name}", self._get_response_handler),
        )

    def activate(self) -> None:
        for (event, handler), unique_id in zip(self._events, self._ids(), strict=True):
            self.client.meta.events.register(event, handler, unique_id=unique_id)

    def deactivate(self) -> None:
        for (event, handler), unique_id in zip(self._events, self._ids(), strict=True):
            self.client.meta.events.unregister(event, handler, unique_id=unique_id)

    def _ids(self) -> tuple[str, str]:
        return self._expected_params_event_id, self._event_id


def load_judge() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "canary_analysis_judge_config", FOLDER / "judge.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


JUDGE = load_judge()


def canary_config() -> dict:
    """The default configuration, with Averages where it asks for p99 (moto has no pNN)."""
    config = JUDGE.default_config(
        load_balancer_full_name=LOAD_BALANCER,
        target_groups={BLUE_TG: BLUE_TG_NAME, GREEN_TG: GREEN_TG_NAME},
        model_name=MODEL,
    )
    for metric in config["metrics"]:
        if metric["statistic"] == "p99":
            metric["statistic"] = "Average"
    return config


def hook_event(
    *,
    green_weight: float = 10,
    details: dict | None = None,
    stage: str = "PRODUCTION_TRAFFIC_SHIFT",
) -> dict:
    event = {
        "executionId": "f4fcae0f-9bec-41c6-ba87-0eaa0cef8af5",
        "lifecycleStage": stage,
        "resourceArn": DEPLOYMENT,
        "executionDetails": {
            "serviceArn": SERVICE,
            "targetServiceRevisionArn": GREEN,
            "testTrafficWeights": {},
            "productionTrafficWeights": {GREEN: green_weight, BLUE: 100 - green_weight},
        },
    }
    if details is not None:
        event["hookDetails"] = details
    return event


def started(at: dt.datetime = STARTED, weight: float = 10) -> dict:
    return {
        "canaryAnalysisStartedAt": at.isoformat().replace("+00:00", "Z"),
        "canaryAnalysisWeight": weight,
    }


@pytest.fixture
def task_definitions(aws_client) -> Callable[[str | None], str]:
    """Registers a task definition whose container has MODEL_VERSION (when given)."""

    def register(model_version: str | None) -> str:
        environment = [{"name": "MODEL_NAME", "value": MODEL}]
        if model_version is not None:
            environment.append({"name": "MODEL_VERSION", "value": model_version})
        return aws_client("ecs").register_task_definition(
            family="recommender",
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="1024",
            memory="2048",
            containerDefinitions=[
                {"name": "serving", "image": "serving:latest", "environment": environment},
                {"name": "log-router", "image": "fluent-bit:latest"},
            ],
        )["taskDefinition"]["taskDefinitionArn"]

    return register


@pytest.fixture
def load_hook(monkeypatch, mocked_aws, load_handler) -> Callable[..., types.ModuleType]:
    def load(config: dict | None = None, now: dt.datetime = STARTED) -> types.ModuleType:
        monkeypatch.setenv("CANARY_CONFIG", json.dumps(config or canary_config()))
        hook = load_handler("canary_analysis")
        monkeypatch.setattr(hook, "_utc_now", lambda: now)
        return hook

    return load


@pytest.fixture
def revisions(task_definitions) -> Iterator[Callable[..., None]]:
    """Serves DescribeServiceRevisions for the hook's ECS client, `times` times."""
    stubs: list[OperationStub] = []

    def serve(
        hook: types.ModuleType,
        *,
        times: int = 1,
        blue_version: str | None = "v1",
        green_version: str | None = "v2",
        blue_tgs: tuple[str, ...] = (BLUE_TG,),
        green_tgs: tuple[str, ...] = (GREEN_TG,),
        failures: list | None = None,
    ) -> None:
        revision_of = {
            BLUE: (task_definitions(blue_version), blue_tgs),
            GREEN: (task_definitions(green_version), green_tgs),
        }
        stub = OperationStub(hook.ecs, "DescribeServiceRevisions")
        for _ in range(times):
            stub.add_response(
                "describe_service_revisions",
                {
                    "serviceRevisions": [
                        {
                            "serviceRevisionArn": arn,
                            "serviceArn": SERVICE,
                            "taskDefinition": task_definition,
                            "resolvedConfiguration": {
                                "loadBalancers": [
                                    {"targetGroupArn": target_group} for target_group in groups
                                ]
                            },
                        }
                        for arn, (task_definition, groups) in revision_of.items()
                    ],
                    "failures": failures or [],
                },
                {"serviceRevisionArns": [GREEN, BLUE]},
            )
        stub.activate()
        stubs.append(stub)

    yield serve
    for stub in stubs:
        stub.assert_no_pending_responses()
        stub.deactivate()


def side_metrics(
    rng: random.Random, *, latency: float = 1.0, errors: float = 1.0
) -> dict[str, dict | None]:
    """One minute of one side, as the datum fields put_metric_data takes: ALB latency
    around 250 ms and app latency around 180 ms with 4 % noise, about 2,000 requests
    with a 0.5 % 5xx and error rate (no count datapoint in a minute without any, as on
    AWS and in the serving app's EMF), and a mean TopScore near 0.62. The app's Latency
    is an aggregate of one value a request, as EMF publishes it."""
    requests = rng.randint(1_900, 2_100)
    five_xx = sum(rng.random() < 0.005 * errors for _ in range(requests))
    app_errors = sum(rng.random() < 0.005 * errors for _ in range(requests))
    app_latency = 180 * latency * rng.lognormvariate(0, 0.04)
    return {
        "TargetResponseTime": {"Value": 0.25 * latency * rng.lognormvariate(0, 0.04)},
        "RequestCount": {"Value": float(requests)},
        "HTTPCode_Target_5XX_Count": {"Value": float(five_xx)} if five_xx else None,
        "Latency": {
            "StatisticValues": {
                "SampleCount": float(requests - app_errors),
                "Sum": app_latency * (requests - app_errors),
                "Minimum": app_latency / 2,
                "Maximum": app_latency * 3,
            }
        },
        "Error": {"Value": float(app_errors)} if app_errors else None,
        "TopScore": {"Value": rng.gauss(0.62, 0.01)},
    }


@pytest.fixture
def traffic(aws_client) -> Callable[..., None]:
    """Puts `minutes` minutes of metrics from 10:01 for both sides; `canary` scales the
    green side's latency and errors."""

    def put(
        minutes: int,
        *,
        seed: int = 1,
        canary: dict | None = None,
        green_version: str = "v2",
        sides: tuple[str, ...] = ("blue", "green"),
    ) -> None:
        rng = random.Random(seed)
        where = {
            "blue": (BLUE_TG_NAME, "v1", {}),
            "green": (GREEN_TG_NAME, green_version, canary or {}),
        }
        alb, app = [], []
        for minute in range(minutes):
            timestamp = WINDOW_START + dt.timedelta(minutes=minute, seconds=30)
            for side in sides:
                target_group, version, effects = where[side]
                for name, fields in side_metrics(rng, **effects).items():
                    if fields is None:
                        continue
                    datum = {"MetricName": name, "Timestamp": timestamp, **fields}
                    if name in ("Latency", "Error", "TopScore"):
                        dimensions = {"ModelName": MODEL, "ModelVersion": version}
                        app.append({**datum, "Dimensions": dims(dimensions)})
                    else:
                        dimensions = {"LoadBalancer": LOAD_BALANCER, "TargetGroup": target_group}
                        alb.append({**datum, "Dimensions": dims(dimensions)})
        for namespace, data in (("AWS/ApplicationELB", alb), ("MLPlatform/Serving", app)):
            for start in range(0, len(data), 500):
                aws_client("cloudwatch").put_metric_data(
                    Namespace=namespace, MetricData=data[start : start + 500]
                )

    return put


def dims(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"Name": name, "Value": value} for name, value in values.items()]


def calls_of(client: Any) -> list[str]:
    calls: list[str] = []
    # before-parameter-build reaches every handler; before-call stops at a stub's answer.
    client.meta.events.register(
        "before-parameter-build", lambda model, **_: calls.append(model.name)
    )
    return calls


def messages(caplog, level: str = "INFO") -> list[Any]:
    return [record for record in caplog.records if record.levelname == level]


# --- timing -------------------------------------------------------------------------------


def test_first_invocation_starts_the_clock_and_waits(load_hook, revisions, lambda_context):
    hook = load_hook(now=STARTED)
    revisions(hook)
    metric_calls = calls_of(hook.cloudwatch)

    response = hook.handler(hook_event(), lambda_context)

    assert response == {
        "hookStatus": "IN_PROGRESS",
        "callBackDelay": 60,
        "hookDetails": {
            "canaryAnalysisStartedAt": "2026-11-28T10:00:30Z",
            "canaryAnalysisWeight": 10,
        },
    }
    assert metric_calls == []


def test_waits_until_the_window_has_elapsed(load_hook, revisions, traffic, lambda_context):
    traffic(9)
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=9, seconds=50))
    revisions(hook)
    metric_calls = calls_of(hook.cloudwatch)

    response = hook.handler(hook_event(details=started()), lambda_context)

    assert response["hookStatus"] == "IN_PROGRESS"
    assert response["hookDetails"] == started()
    assert metric_calls == []


def test_waits_for_enough_samples_after_the_window(
    load_hook, revisions, traffic, lambda_context, caplog
):
    # Traffic on the canary only began 4 minutes before the window closed.
    traffic(10, sides=("blue",))
    traffic(4, seed=2, sides=("green",))
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook)

    response = hook.handler(hook_event(details=started()), lambda_context)

    assert response["hookStatus"] == "IN_PROGRESS"
    [waiting] = [r for r in messages(caplog) if r.getMessage().endswith("waiting for samples")]
    assert waiting.samples["alb_latency_p99"] == [4, 10]


def test_a_healthy_canary_succeeds(load_hook, revisions, traffic, lambda_context, caplog):
    traffic(10)
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook)

    response = hook.handler(hook_event(details=started()), lambda_context)

    assert response == {"hookStatus": "SUCCEEDED"}
    judged = [r for r in messages(caplog) if r.getMessage() == "Canary metric judged"]
    assert [r.metric for r in judged] == [
        "alb_latency_p99",
        "alb_5xx_rate",
        "app_latency_p99",
        "app_error_rate",
        "app_score_mean",
    ]
    assert all(r.classification == "Pass" for r in judged)
    assert all(r.canary["count"] == r.baseline["count"] == 10 for r in judged)
    latency = judged[0]
    assert 0 <= latency.p_value <= 1
    assert latency.confidence_interval[0] <= latency.hodges_lehmann_estimate
    assert latency.mean_ratio == pytest.approx(1, abs=0.1)
    [summary] = [r for r in messages(caplog) if r.getMessage() == "Canary judged"]
    assert (summary.score, summary.verdict, summary.hook_status) == (100.0, "Pass", "SUCCEEDED")
    assert summary.window == ["2026-11-28T10:01:00+00:00", "2026-11-28T10:11:00+00:00"]


def test_minutes_without_a_5xx_datapoint_count_as_no_errors(
    load_hook, revisions, traffic, lambda_context, caplog
):
    traffic(10, canary={"errors": 0.0})
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook)

    hook.handler(hook_event(details=started()), lambda_context)

    judged = {r.metric: r for r in messages(caplog) if r.getMessage() == "Canary metric judged"}
    for rate in ("alb_5xx_rate", "app_error_rate"):
        assert judged[rate].canary == {"count": 10, "mean": 0.0, "minimum": 0.0, "maximum": 0.0}
        assert judged[rate].baseline["count"] == 10
        assert 0.001 < judged[rate].baseline["mean"] < 0.01


@pytest.mark.parametrize(
    ("effects", "failing"),
    [({"latency": 1.3}, "app_latency_p99"), ({"errors": 3.0}, "alb_5xx_rate")],
)
def test_a_degraded_canary_fails_and_rolls_back(
    load_hook, revisions, traffic, lambda_context, caplog, effects, failing
):
    traffic(10, canary=effects)
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook)

    response = hook.handler(hook_event(details=started()), lambda_context)

    assert response == {"hookStatus": "FAILED"}
    classifications = {
        r.metric: r.classification
        for r in messages(caplog)
        if r.getMessage() == "Canary metric judged"
    }
    assert classifications[failing] == "High"
    [summary] = [r for r in messages(caplog) if r.getMessage() == "Canary judged"]
    assert summary.verdict in ("Marginal", "Fail")
    assert summary.hook_status == "FAILED"


def test_no_data_until_the_max_wait_fails_safe(load_hook, revisions, lambda_context, caplog):
    hook = load_hook(now=STARTED + dt.timedelta(minutes=30))
    revisions(hook)

    response = hook.handler(hook_event(details=started()), lambda_context)

    assert response == {"hookStatus": "FAILED"}
    [error] = messages(caplog, "ERROR")
    assert error.getMessage() == "Too little data after max_wait_minutes: failing safe"
    assert error.samples["alb_latency_p99"] == [0, 0]


def test_just_before_the_max_wait_it_still_waits(load_hook, revisions, lambda_context):
    hook = load_hook(now=STARTED + dt.timedelta(minutes=29, seconds=59))
    revisions(hook)

    assert hook.handler(hook_event(details=started()), lambda_context)["hookStatus"] == (
        "IN_PROGRESS"
    )


def test_a_new_step_restarts_the_clock(load_hook, revisions, lambda_context):
    now = STARTED + dt.timedelta(minutes=45)
    hook = load_hook(now=now)
    revisions(hook)

    response = hook.handler(hook_event(green_weight=50, details=started(weight=10)), lambda_context)

    assert response["hookStatus"] == "IN_PROGRESS"
    assert response["hookDetails"] == started(at=now, weight=50)


# --- which side is which ------------------------------------------------------------------


def test_queries_each_side_by_its_target_group_and_model_version(
    load_hook, revisions, traffic, lambda_context
):
    traffic(10)
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    # The swapped case: this time green runs in the "blue" target group.
    revisions(hook, blue_tgs=(GREEN_TG,), green_tgs=(BLUE_TG,))
    requests: list[dict] = []
    hook.cloudwatch.meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData",
        lambda params, **_: requests.append(params),
    )

    hook.handler(hook_event(details=started()), lambda_context)

    [request] = requests
    stats = {query["Id"]: query["MetricStat"] for query in request["MetricDataQueries"]}
    dimensions = {
        query_id: {d["Name"]: d["Value"] for d in stat["Metric"]["Dimensions"]}
        for query_id, stat in stats.items()
    }
    assert dimensions["m0_canary"] == {"LoadBalancer": LOAD_BALANCER, "TargetGroup": BLUE_TG_NAME}
    assert dimensions["m0_baseline"]["TargetGroup"] == GREEN_TG_NAME
    assert dimensions["d1_canary"]["TargetGroup"] == BLUE_TG_NAME
    assert stats["d1_canary"]["Metric"]["MetricName"] == "RequestCount"
    assert dimensions["m2_canary"] == {"ModelName": MODEL, "ModelVersion": "v2"}
    assert dimensions["m2_baseline"] == {"ModelName": MODEL, "ModelVersion": "v1"}
    assert dimensions["d3_baseline"] == {"ModelName": MODEL, "ModelVersion": "v1"}
    assert (stats["d3_baseline"]["Metric"]["MetricName"], stats["d3_baseline"]["Stat"]) == (
        "Latency",
        "SampleCount",
    )
    assert len(stats) == 14
    assert {stat["Period"] for stat in stats.values()} == {60}
    assert request["StartTime"] == WINDOW_START
    assert request["EndTime"] == WINDOW_START + dt.timedelta(minutes=10)


def test_the_same_model_version_skips_app_metrics(
    load_hook, revisions, traffic, lambda_context, caplog
):
    traffic(10, green_version="v1")
    hook = load_hook(now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook, green_version="v1")

    response = hook.handler(hook_event(details=started()), lambda_context)

    assert response == {"hookStatus": "SUCCEEDED"}
    [warning] = messages(caplog, "WARNING")
    assert (
        warning.getMessage()
        == "Baseline and canary serve the same model version: app metrics skipped"
    )
    assert warning.skipped_metrics == ["app_latency_p99", "app_error_rate", "app_score_mean"]
    judged = [r.metric for r in messages(caplog) if r.getMessage() == "Canary metric judged"]
    assert judged == ["alb_latency_p99", "alb_5xx_rate"]
    [summary] = [r for r in messages(caplog) if r.getMessage() == "Canary judged"]
    assert summary.score == 100.0


def test_alb_only_config_never_reads_task_definitions(
    load_hook, revisions, traffic, lambda_context
):
    config = canary_config()
    config["metrics"] = [m for m in config["metrics"] if m["source"] == "alb"]
    config["group_weights"] = {"latency": 50, "errors": 50}
    traffic(10)
    hook = load_hook(config, now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook, blue_version=None, green_version=None)
    ecs_calls = calls_of(hook.ecs)

    assert hook.handler(hook_event(details=started()), lambda_context) == {
        "hookStatus": "SUCCEEDED"
    }
    assert ecs_calls == ["DescribeServiceRevisions"]


def test_p99_statistics_are_asked_of_cloudwatch_and_pages_merged(
    load_hook, revisions, lambda_context, caplog
):
    config = canary_config()
    for metric in config["metrics"]:
        if metric["metric_name"] in ("TargetResponseTime", "Latency"):
            metric["statistic"] = "p99"
    hook = load_hook(config, now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook)
    rng = random.Random(3)
    minutes = [WINDOW_START + dt.timedelta(minutes=m) for m in range(10)]
    ids = [f"m{index}_{side}" for index in range(5) for side in ("canary", "baseline")]
    ids += [f"d{index}_{side}" for index in (1, 3) for side in ("canary", "baseline")]

    def page(part: list[dt.datetime]) -> list[dict]:
        return [
            {
                "Id": query_id,
                "Timestamps": part,
                "Values": [rng.uniform(900, 1_100) for _ in part],
                "StatusCode": "Complete",
            }
            for query_id in ids
        ]

    stub = OperationStub(hook.cloudwatch, "GetMetricData")
    stub.add_response("get_metric_data", {"MetricDataResults": page(minutes[:4]), "NextToken": "2"})
    stub.add_response("get_metric_data", {"MetricDataResults": page(minutes[4:])})
    stub.activate()
    requests: list[dict] = []
    hook.cloudwatch.meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData",
        lambda params, **_: requests.append(params),
    )

    response = hook.handler(hook_event(details=started()), lambda_context)

    stub.assert_no_pending_responses()
    assert response == {"hookStatus": "SUCCEEDED"}
    assert [request.get("NextToken") for request in requests] == [None, "2"]
    stats = {q["Id"]: q["MetricStat"] for q in requests[0]["MetricDataQueries"]}
    assert stats["m0_canary"]["Stat"] == "p99"
    assert stats["m0_canary"]["Metric"]["MetricName"] == "TargetResponseTime"
    assert stats["m2_baseline"]["Stat"] == "p99"
    assert stats["m2_baseline"]["Metric"]["Namespace"] == "MLPlatform/Serving"
    assert stats["m1_canary"]["Stat"] == "Sum"
    judged = [r for r in messages(caplog) if r.getMessage() == "Canary metric judged"]
    assert {(r.canary["count"], r.baseline["count"]) for r in judged} == {(10, 10)}


def test_nothing_left_to_judge_fails(load_hook, revisions, lambda_context, caplog):
    config = canary_config()
    config["metrics"] = [m for m in config["metrics"] if m["source"] == "app"]
    hook = load_hook(config, now=WINDOW_START + dt.timedelta(minutes=10, seconds=5))
    revisions(hook, green_version="v1")

    assert hook.handler(hook_event(details=started()), lambda_context) == {"hookStatus": "FAILED"}
    assert messages(caplog, "ERROR")[0].error == "no metric is left to judge"


# --- nothing to judge ---------------------------------------------------------------------


@pytest.mark.parametrize("green_weight", [0, 100])
def test_a_rollback_or_the_final_shift_succeeds_without_judging(
    load_hook, lambda_context, green_weight
):
    hook = load_hook()
    ecs_calls, metric_calls = calls_of(hook.ecs), calls_of(hook.cloudwatch)

    response = hook.handler(hook_event(green_weight=green_weight), lambda_context)

    assert response == {"hookStatus": "SUCCEEDED"}
    assert ecs_calls == metric_calls == []


# --- failing safe -------------------------------------------------------------------------


def without(path: tuple, value: Any = None) -> dict:
    event = hook_event()
    target = event
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return event


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ("not a payload", "the payload must be a JSON object, got str"),
        (without(("lifecycleStage",)), "lifecycleStage must be a non-empty string"),
        (without(("executionDetails",)), "executionDetails must be an object"),
        (
            without(("executionDetails", "targetServiceRevisionArn")),
            "targetServiceRevisionArn must be a non-empty string",
        ),
        (
            without(("executionDetails", "productionTrafficWeights")),
            "productionTrafficWeights must map revision ARNs to percentages",
        ),
        (
            without(("executionDetails", "productionTrafficWeights"), {GREEN: "10"}),
            "productionTrafficWeights must map revision ARNs to percentages",
        ),
        (
            without(("executionDetails", "productionTrafficWeights"), {BLUE: 100}),
            "productionTrafficWeights has no weight for targetServiceRevisionArn",
        ),
        (without(("hookDetails",), ["state"]), "hookDetails must be an object"),
        (
            hook_event(stage="POST_TEST_TRAFFIC_SHIFT"),
            "the hook judges PRODUCTION_TRAFFIC_SHIFT only, invoked for POST_TEST_TRAFFIC_SHIFT",
        ),
    ],
)
def test_a_malformed_payload_fails_with_a_clear_log(
    load_hook, lambda_context, caplog, event, problem
):
    hook = load_hook()

    response = hook.handler(event, lambda_context)

    assert response == {"hookStatus": "FAILED"}
    [error] = messages(caplog, "ERROR")
    assert error.getMessage() == "Canary analysis impossible: failing (InvalidEvent)"
    assert error.error.startswith(problem)


@pytest.mark.parametrize(
    "stored",
    [
        {"canaryAnalysisStartedAt": "yesterday", "canaryAnalysisWeight": 10},
        {"canaryAnalysisStartedAt": "2026-11-28T10:00:30", "canaryAnalysisWeight": 10},
        {"canaryAnalysisStartedAt": "2026-11-28T11:00:00Z", "canaryAnalysisWeight": 10},
        {"canaryAnalysisStartedAt": 1_764_324_030, "canaryAnalysisWeight": 10},
    ],
)
def test_corrupt_hook_state_fails(load_hook, revisions, lambda_context, caplog, stored):
    hook = load_hook(now=STARTED + dt.timedelta(minutes=5))
    revisions(hook)

    assert hook.handler(hook_event(details=stored), lambda_context) == {"hookStatus": "FAILED"}
    [error] = messages(caplog, "ERROR")
    assert "hookDetails.canaryAnalysisStartedAt" in error.error


@pytest.mark.parametrize(
    ("serve", "problem"),
    [
        ({"green_tgs": ()}, "is served by 0 of the configured target groups"),
        ({"green_tgs": (GREEN_TG, BLUE_TG)}, "is served by 2 of the configured target groups"),
        ({"green_tgs": (BLUE_TG,)}, f"baseline and canary are both served by {BLUE_TG_NAME}"),
        ({"green_version": None}, "must set one MODEL_VERSION in its containers' environment"),
        (
            {"failures": [{"arn": GREEN, "reason": "MISSING"}]},
            "ECS could not describe the revisions",
        ),
    ],
)
def test_a_deployment_that_cannot_be_matched_fails(
    load_hook, revisions, lambda_context, caplog, serve, problem
):
    hook = load_hook()
    revisions(hook, **serve)

    assert hook.handler(hook_event(), lambda_context) == {"hookStatus": "FAILED"}
    [error] = messages(caplog, "ERROR")
    assert error.getMessage() == "Canary analysis impossible: failing (AnalysisError)"
    assert problem in error.error


def test_more_than_one_baseline_fails(load_hook, lambda_context, caplog):
    hook = load_hook()
    event = hook_event()
    event["executionDetails"]["productionTrafficWeights"] = {GREEN: 10, BLUE: 45, "other": 45}

    assert hook.handler(event, lambda_context) == {"hookStatus": "FAILED"}
    assert "expected one baseline revision with traffic" in messages(caplog, "ERROR")[0].error


def test_an_aws_error_fails_with_the_traceback_logged(load_hook, lambda_context, caplog):
    # No stubbed revisions: moto answers DescribeServiceRevisions with an error.
    hook = load_hook()

    assert hook.handler(hook_event(), lambda_context) == {"hookStatus": "FAILED"}
    [error] = messages(caplog, "ERROR")
    assert error.getMessage() == "Canary analysis failed unexpectedly: failing"
    assert error.exc_info is not None


# --- configuration and packaging ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "CANARY_CONFIG is not set"),
        ("{not json", "CANARY_CONFIG is not JSON"),
        (json.dumps({"model_name": MODEL}), "CANARY_CONFIG.load_balancer_full_name is required"),
    ],
)
def test_a_bad_config_stops_the_cold_start(monkeypatch, mocked_aws, load_handler, value, problem):
    if value is None:
        monkeypatch.delenv("CANARY_CONFIG", raising=False)
    else:
        monkeypatch.setenv("CANARY_CONFIG", value)

    with pytest.raises(ValueError, match=problem) as error:
        load_handler("canary_analysis")

    assert type(error.value).__name__ == "ConfigError"


def test_the_judge_is_the_sibling_file_even_with_another_judge_importable(load_hook, monkeypatch):
    decoy = types.ModuleType("judge")
    monkeypatch.setitem(sys.modules, "judge", decoy)

    hook = load_hook()

    assert hook.judge is not decoy
    assert hook.judge.__file__ == str(FOLDER / "judge.py")


def test_imports_as_the_lambda_runtime_does():
    # The runtime imports `handler` with the function's folder first on sys.path.
    environment = {
        **os.environ,
        "CANARY_CONFIG": json.dumps(canary_config()),
        "AWS_DEFAULT_REGION": REGION,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    script = "import handler; print(handler.judge.__file__, len(handler.CONFIG.metrics))"

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=FOLDER,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(FOLDER / "judge.py"), "5"]
