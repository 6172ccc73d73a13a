"""Canary analysis hook of an ECS service deployed with ``strategy = CANARY`` (or LINEAR).

Registered on the ``PRODUCTION_TRAFFIC_SHIFT`` lifecycle stage, which ECS invokes at each
traffic shift step, it judges the green revision (canary) against the blue one (baseline)
while both take production traffic, with the Kayenta-style judge of the sibling ``judge``
module, and answers ECS::

    {"hookStatus": "IN_PROGRESS", "callBackDelay": <seconds>, "hookDetails": {...}}
    {"hookStatus": "SUCCEEDED"}     # the deployment goes on
    {"hookStatus": "FAILED"}        # ECS rolls the deployment back

Payload fields it relies on (ECS documents these for Lambda hooks)::

    {"lifecycleStage": "PRODUCTION_TRAFFIC_SHIFT",
     "executionDetails": {
         "targetServiceRevisionArn": "<green revision ARN>",
         "productionTrafficWeights": {"<green revision ARN>": 10, "<blue revision ARN>": 90}},
     "hookDetails": {...}}          # optional; what an IN_PROGRESS answer asked ECS to keep

``executionId``, ``resourceArn`` and ``serviceArn`` are logged but not needed.

Decisions, in order:

- A malformed payload, a stage other than PRODUCTION_TRAFFIC_SHIFT, or any error on the way
  (an AWS call failing, a revision that cannot be matched to a configured target group):
  FAILED, with the cause logged. ECS would roll back on an exception too, but would report
  only a missing hookStatus; an explicit FAILED keeps the cause in the log.
- Green at 0 % of production traffic (a rollback re-invokes the hook this way): SUCCEEDED,
  so a rollback is never held up. Green at 100 % (the final shift, after the canary steps
  were judged): SUCCEEDED. So under the BLUE_GREEN strategy, whose only shift is 0 to
  100 %, nothing is judged: the hook is for CANARY and LINEAR.
- Otherwise a canary step: the analysis starts at the first invocation for this step, whose
  time is kept in hookDetails (``canaryAnalysisStartedAt``, with ``canaryAnalysisWeight``,
  green's weight, so that the next step of a LINEAR deployment starts afresh). The window
  runs from the next whole minute after the start to the last whole minute before now.
  Until ``analysis_minutes`` have passed and every metric has ``min_samples`` per-minute
  samples on both sides: IN_PROGRESS after ``callback_delay_seconds``. Past
  ``max_wait_minutes`` without that: FAILED (too little data fails safe). Then the judge
  decides: a Pass verdict SUCCEEDS, a Fail verdict FAILS, and a Marginal verdict FAILS
  unless ``marginal_is_failure`` is false. Each metric's classification, p-value,
  Hodges-Lehmann estimate, interval and mean ratio, and the summary, are logged.

Baseline and canary: green is ``targetServiceRevisionArn``; blue is the one other revision
with production traffic. ``ecs:DescribeServiceRevisions`` gives each revision's task
definition and, in ``resolvedConfiguration.loadBalancers``, the target group that serves it,
which must be one of the configured two (their CloudWatch dimension comes from there).
Each revision's model version is the ``MODEL_VERSION`` environment variable of its task
definition's containers (asked only when app metrics are configured). When both revisions
serve the same model version, app metrics cannot tell them apart: they are skipped (logged)
and the canary is judged on the ALB metrics alone.

Samples: one per minute from ``cloudwatch:GetMetricData`` (60 s periods): ALB metrics in
AWS/ApplicationELB by LoadBalancer and TargetGroup, app metrics in ``app_namespace`` by
ModelName and ModelVersion (the metric must be published with exactly these two
dimensions). A metric with a ``denominator`` is divided, minute by minute, by that metric
of the same side, a missing count being 0 (CloudWatch has no datapoint for a minute
without 5xx or errors).

Environment: ``CANARY_CONFIG``, the JSON that ``judge.default_config`` renders (see
``judge.parse_config``); it is validated at cold start, and a malformed one stops the
function from loading with a ConfigError naming the key (ECS then rolls back).

IAM, every call and what it acts on:

- ``ecs:DescribeServiceRevisions`` on the service's revisions
  (``arn:aws:ecs:<region>:<account>:service-revision/<cluster>/<service>/*``);
- ``ecs:DescribeTaskDefinition`` (no resource-level permissions: ``*``), only with app metrics;
- ``cloudwatch:GetMetricData`` (no resource-level permissions: ``*``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from botocore.config import Config


def _import_sibling(name: str) -> ModuleType:
    """Imports `<name>.py` from this file's folder by path.

    The Lambda runtime puts the folder on sys.path, but a loader that imports this file by
    path (the tests do) does not; loading by path works in both and cannot pick up another
    module of the same name from elsewhere on sys.path.
    """
    module_name = f"{__name__}_{name}"
    spec = importlib.util.spec_from_file_location(
        module_name, Path(__file__).resolve().with_name(f"{name}.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name}.py next to {__file__}")
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the module runs.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


judge = _import_sibling("judge")

HOOK_STAGE = "PRODUCTION_TRAFFIC_SHIFT"
STARTED_AT = "canaryAnalysisStartedAt"
WEIGHT = "canaryAnalysisWeight"
ALB_NAMESPACE = "AWS/ApplicationELB"
PERIOD_SECONDS = 60
SUCCEEDED, FAILED, IN_PROGRESS = "SUCCEEDED", "FAILED", "IN_PROGRESS"


def _load_config() -> Any:
    raw = os.environ.get("CANARY_CONFIG")
    if raw is None:
        raise judge.ConfigError("CANARY_CONFIG is not set")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise judge.ConfigError(f"CANARY_CONFIG is not JSON: {error}") from None
    return judge.parse_config(parsed)


logger = Logger(service="canary-analysis")
CONFIG = _load_config()
# Throttling on a busy account should be retried, not turned into a rollback.
_CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})
ecs = boto3.client("ecs", config=_CLIENT_CONFIG)
cloudwatch = boto3.client("cloudwatch", config=_CLIENT_CONFIG)


class InvalidEvent(ValueError):  # noqa: N818 - the error name the logs show
    """The hook payload is malformed; the message names the field."""


class AnalysisError(RuntimeError):
    """The deployment cannot be judged as configured; the message says why."""


@dataclass(frozen=True)
class HookEvent:
    stage: str
    canary_revision: str
    weights: Mapping[str, float]
    hook_details: Mapping[str, Any]


@dataclass(frozen=True)
class Side:
    """One side of the comparison: a service revision, its target group's full name and,
    when app metrics are configured, the model version it serves."""

    revision: str
    target_group: str
    model_version: str | None


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _response(status: str, **extra: Any) -> dict[str, Any]:
    return {"hookStatus": status, **extra}


# --- the payload --------------------------------------------------------------------------


def _parse_event(event: object) -> HookEvent:
    if not isinstance(event, dict):
        raise InvalidEvent(f"the payload must be a JSON object, got {type(event).__name__}")
    stage = event.get("lifecycleStage")
    if not isinstance(stage, str) or not stage:
        raise InvalidEvent(f"lifecycleStage must be a non-empty string, got {stage!r}")
    details = event.get("executionDetails")
    if not isinstance(details, dict):
        raise InvalidEvent(f"executionDetails must be an object, got {details!r}")
    canary = details.get("targetServiceRevisionArn")
    if not isinstance(canary, str) or not canary:
        raise InvalidEvent(f"targetServiceRevisionArn must be a non-empty string, got {canary!r}")
    weights = details.get("productionTrafficWeights")
    if not isinstance(weights, dict) or not all(
        isinstance(weight, int | float) and not isinstance(weight, bool) and 0 <= weight <= 100
        for weight in weights.values()
    ):
        raise InvalidEvent(
            f"productionTrafficWeights must map revision ARNs to percentages, got {weights!r}"
        )
    hook_details = event.get("hookDetails") or {}
    if not isinstance(hook_details, dict):
        raise InvalidEvent(f"hookDetails must be an object, got {hook_details!r}")
    return HookEvent(stage, canary, weights, hook_details)


def _analysis_start(hook: HookEvent, canary_weight: float, now: dt.datetime) -> dt.datetime:
    """When this step's analysis started: kept in hookDetails, or now for a new step."""
    stored = hook.hook_details.get(STARTED_AT)
    if stored is None or hook.hook_details.get(WEIGHT) != canary_weight:
        return now
    try:
        started_at = dt.datetime.fromisoformat(stored)
    except (TypeError, ValueError):
        raise InvalidEvent(f"hookDetails.{STARTED_AT} is not a timestamp: {stored!r}") from None
    if started_at.tzinfo is None or started_at > now:
        raise InvalidEvent(f"hookDetails.{STARTED_AT} is not a past UTC time: {stored!r}")
    return started_at


# --- baseline and canary ------------------------------------------------------------------


def _model_version(task_definition: str) -> str:
    containers = ecs.describe_task_definition(taskDefinition=task_definition)["taskDefinition"][
        "containerDefinitions"
    ]
    versions = {
        variable["value"]
        for container in containers
        for variable in container.get("environment", [])
        if variable.get("name") == "MODEL_VERSION"
    }
    if len(versions) != 1:
        raise AnalysisError(
            f"{task_definition} must set one MODEL_VERSION in its containers' environment, "
            f"found {sorted(versions)}"
        )
    return versions.pop()


def _side(revision: Mapping[str, Any], *, with_model_version: bool) -> Side:
    arn = revision["serviceRevisionArn"]
    served_by = [
        balancer["targetGroupArn"]
        for balancer in revision.get("resolvedConfiguration", {}).get("loadBalancers", [])
        if balancer.get("targetGroupArn") in CONFIG.target_groups
    ]
    if len(served_by) != 1:
        raise AnalysisError(
            f"{arn} is served by {len(served_by)} of the configured target groups "
            f"{sorted(CONFIG.target_groups)}, expected exactly 1"
        )
    version = _model_version(revision["taskDefinition"]) if with_model_version else None
    return Side(arn, CONFIG.target_groups[served_by[0]], version)


def _sides(canary_revision: str, baseline_revision: str) -> tuple[Side, Side]:
    response = ecs.describe_service_revisions(
        serviceRevisionArns=[canary_revision, baseline_revision]
    )
    if response.get("failures"):
        raise AnalysisError(f"ECS could not describe the revisions: {response['failures']}")
    by_arn = {revision["serviceRevisionArn"]: revision for revision in response["serviceRevisions"]}
    with_versions = any(metric.query.source == "app" for metric in CONFIG.metrics)
    canary, baseline = (
        _side(by_arn[arn], with_model_version=with_versions)
        for arn in (canary_revision, baseline_revision)
    )
    if canary.target_group == baseline.target_group:
        raise AnalysisError(f"baseline and canary are both served by {canary.target_group}")
    return canary, baseline


def _metrics_to_judge(canary: Side, baseline: Side) -> list[Any]:
    if canary.model_version is None or canary.model_version != baseline.model_version:
        return list(CONFIG.metrics)
    skipped = [metric.analysis.name for metric in CONFIG.metrics if metric.query.source == "app"]
    logger.warning(
        "Baseline and canary serve the same model version: app metrics skipped",
        extra={"model_version": canary.model_version, "skipped_metrics": skipped},
    )
    return [metric for metric in CONFIG.metrics if metric.query.source != "app"]


# --- samples ------------------------------------------------------------------------------


def _metric_stat(source: str, side: Side, metric_name: str, statistic: str) -> dict[str, Any]:
    if source == "alb":
        namespace = ALB_NAMESPACE
        dimensions = {
            "LoadBalancer": CONFIG.load_balancer_full_name,
            "TargetGroup": side.target_group,
        }
    else:
        namespace = CONFIG.app_namespace
        dimensions = {"ModelName": CONFIG.model_name, "ModelVersion": side.model_version}
    return {
        "Metric": {
            "Namespace": namespace,
            "MetricName": metric_name,
            "Dimensions": [{"Name": name, "Value": value} for name, value in dimensions.items()],
        },
        "Period": PERIOD_SECONDS,
        "Stat": statistic,
    }


def _queries(metrics: Sequence[Any], sides: Mapping[str, Side]) -> list[dict[str, Any]]:
    """A query a metric and side (id m<index>_<side>), and one for its denominator
    (d<index>_<side>) when it has one."""
    queries = []
    for index, metric in enumerate(metrics):
        query = metric.query
        for role, side in sides.items():
            stat = _metric_stat(query.source, side, query.metric_name, query.statistic)
            queries.append({"Id": f"m{index}_{role}", "MetricStat": stat})
            if query.denominator is not None:
                per = query.denominator
                stat = _metric_stat(query.source, side, per.metric_name, per.statistic)
                queries.append({"Id": f"d{index}_{role}", "MetricStat": stat})
    return queries


def _fetch(
    queries: Sequence[dict[str, Any]], start: dt.datetime, end: dt.datetime
) -> dict[str, dict[dt.datetime, float]]:
    series: dict[str, dict[dt.datetime, float]] = {query["Id"]: {} for query in queries}
    pages = cloudwatch.get_paginator("get_metric_data").paginate(
        MetricDataQueries=list(queries), StartTime=start, EndTime=end, ScanBy="TimestampAscending"
    )
    for page in pages:
        for result in page["MetricDataResults"]:
            series[result["Id"]].update(zip(result["Timestamps"], result["Values"], strict=True))
    return series


def _samples(
    metric: Any, index: int, role: str, series: Mapping[str, Mapping[dt.datetime, float]]
) -> list[float]:
    values = series[f"m{index}_{role}"]
    if metric.query.denominator is None:
        return [values[minute] for minute in sorted(values)]
    per = series[f"d{index}_{role}"]
    return [values.get(minute, 0.0) / per[minute] for minute in sorted(per) if per[minute] > 0]


# --- the decision -------------------------------------------------------------------------


def _in_progress(
    started_at: dt.datetime, canary_weight: float, why: str, details: Mapping[str, Any]
) -> dict[str, Any]:
    logger.info(f"Canary analysis in progress: {why}", extra=dict(details))
    return _response(
        IN_PROGRESS,
        callBackDelay=CONFIG.callback_delay_seconds,
        hookDetails={
            STARTED_AT: started_at.isoformat().replace("+00:00", "Z"),
            WEIGHT: canary_weight,
        },
    )


def _minute(moment: dt.datetime, *, up: bool) -> dt.datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor + dt.timedelta(minutes=1) if up and floor != moment else floor


def _judge_step(hook: HookEvent, canary_weight: float, baseline_revision: str) -> dict[str, Any]:
    now = _utc_now()
    canary, baseline = _sides(hook.canary_revision, baseline_revision)
    started_at = _analysis_start(hook, canary_weight, now)
    window_start = _minute(started_at, up=True)
    window_end = _minute(now, up=False)
    timing = {
        "canary": vars(canary),
        "baseline": vars(baseline),
        "canary_weight": canary_weight,
        "started_at": started_at.isoformat(),
        "window": [window_start.isoformat(), window_end.isoformat()],
    }
    # max_wait_minutes >= analysis_minutes + 2 (validated), so the window has closed by the
    # time the wait runs out.
    if window_end < window_start + dt.timedelta(minutes=CONFIG.analysis_minutes):
        return _in_progress(started_at, canary_weight, "window not elapsed", timing)

    metrics = _metrics_to_judge(canary, baseline)
    if not metrics:
        raise AnalysisError("no metric is left to judge")
    sides = {"canary": canary, "baseline": baseline}
    series = _fetch(_queries(metrics, sides), window_start, window_end)
    observations = [
        (metric.analysis, *(_samples(metric, index, role, series) for role in sides))
        for index, metric in enumerate(metrics)
    ]
    counts = {analysis.name: [len(c), len(b)] for analysis, c, b in observations}
    if min(min(pair) for pair in counts.values()) < CONFIG.settings.min_samples:
        if now >= started_at + dt.timedelta(minutes=CONFIG.max_wait_minutes):
            logger.error(
                "Too little data after max_wait_minutes: failing safe",
                extra={**timing, "samples": counts, "min_samples": CONFIG.settings.min_samples},
            )
            return _response(FAILED)
        return _in_progress(
            started_at, canary_weight, "waiting for samples", {**timing, "samples": counts}
        )

    report = judge.judge(observations, CONFIG.settings)
    for result in report.results:
        logger.info("Canary metric judged", extra=result.as_log())
    passed = report.passed(marginal_is_failure=CONFIG.marginal_is_failure)
    logger.info(
        "Canary judged",
        extra={
            **timing,
            "score": report.score,
            "verdict": report.classification,
            "reason": report.reason,
            "group_scores": {group.name: group.score for group in report.groups},
            "marginal_is_failure": CONFIG.marginal_is_failure,
            "hook_status": SUCCEEDED if passed else FAILED,
        },
    )
    return _response(SUCCEEDED if passed else FAILED)


def _evaluate(hook: HookEvent) -> dict[str, Any]:
    if hook.stage != HOOK_STAGE:
        raise InvalidEvent(f"the hook judges {HOOK_STAGE} only, invoked for {hook.stage}")
    if hook.canary_revision not in hook.weights:
        raise InvalidEvent("productionTrafficWeights has no weight for targetServiceRevisionArn")
    canary_weight = hook.weights[hook.canary_revision]
    if canary_weight == 0:
        logger.info("No production traffic on the canary (a rollback): nothing to judge")
        return _response(SUCCEEDED)
    if canary_weight == 100:
        logger.info("The canary takes all production traffic (the final shift): nothing to judge")
        return _response(SUCCEEDED)
    baselines = [
        arn for arn, weight in hook.weights.items() if arn != hook.canary_revision and weight > 0
    ]
    if len(baselines) != 1:
        raise AnalysisError(f"expected one baseline revision with traffic, got {baselines}")
    return _judge_step(hook, canary_weight, baselines[0])


@logger.inject_lambda_context
def handler(event: Any, context: Any) -> dict[str, Any]:
    known = event if isinstance(event, dict) else {}
    logger.append_keys(
        execution_id=known.get("executionId"), service_deployment=known.get("resourceArn")
    )
    try:
        return _evaluate(_parse_event(event))
    except (InvalidEvent, AnalysisError) as error:
        logger.error(
            f"Canary analysis impossible: failing ({type(error).__name__})",
            extra={"error": str(error)},
        )
    except Exception:
        logger.exception("Canary analysis failed unexpectedly: failing")
    return _response(FAILED)
