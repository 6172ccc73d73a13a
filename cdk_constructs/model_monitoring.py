"""ML monitoring of the served models: drift and online-accuracy alarms on the model monitor's
figures, and the retraining that sustained drift asks for.

The model monitor (``jobs/batch/model_monitor.py``, run hourly by the orchestrator) publishes,
per model and per model version, the population stability index of each monitored input
(data drift) and of the top score (prediction drift) against the baseline training wrote
with the version, and the hit rate at K of recorded recommendations (online accuracy). The
alarms read the per-model series, which always describe the version serving the most
traffic, so they survive version changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk_constructs.alerting import AlertTarget, alarm_name
from cdk_constructs.base import PlatformContainer, acknowledge_wildcard_grants
from jobs.monitoring.names import (
    BASELINE_MISSING,
    FEATURE_DIMENSION,
    FEATURE_DRIFT,
    HIT_RATE_AT_K,
    MODEL_DIMENSION,
    NAMESPACE,
    PREDICTION_DRIFT,
)
from platform_config.model import ModelMonitoringConfig
from training.recommender.inputs import INPUT_FEATURES

AREA = "training"
RETRAIN_SIGNAL = "retrain-requested"
HOUR = Duration.hours(1)


class ModelMonitoring(PlatformContainer):
    """Per served model: an alarm per drifting input, one for the top score, one for the
    online hit rate and one for a version served without a baseline; a composite alarm that
    is on while any drift alarm is, and whose every turn to ALARM publishes the model's
    `retrain-requested` signal through the signal publisher (validated and idempotent on the
    state-change event's id, so EventBridge's retries start one run).

    Secure defaults: the rule may invoke only the publisher (the Lambda permission names the
    rule); undeliverable requests wait in an encrypted dead-letter queue that alarms.
    """

    container = "monitoring"
    stereotype = "ml-monitoring"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        models: Sequence[str],
        config: ModelMonitoringConfig,
        alerts: AlertTarget,
        signal_publisher: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        self._name_prefix = name_prefix
        self._config = config
        self._alerts = alerts
        self.dead_letters = alerts.dead_letter_queue(
            self, "RetrainDeadLetters", purpose="retraining requested by drift"
        )
        self.drift_alarms: dict[str, list[cloudwatch.IAlarm]] = {}
        self.retrain_rules: dict[str, events.Rule] = {}
        for model in models:
            drift = self._drift_alarms(model)
            self._accuracy_alarms(model)
            self.drift_alarms[model] = drift
            self.retrain_rules[model] = self._retrain_on_drift(model, drift, signal_publisher)

    def _metric(
        self, name: str, model: str, statistic: str, **dimensions: str
    ) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace=NAMESPACE,
            metric_name=name,
            dimensions_map={MODEL_DIMENSION: model, **dimensions},
            statistic=statistic,
            period=HOUR,
        )

    def _drift_alarms(self, model: str) -> list[cloudwatch.IAlarm]:
        config = self._config
        sustained = config.drift_sustained_hours
        alarms = [
            self._alerts.alarm(
                area=AREA,
                name=f"{model}-drift-{feature.replace('_', '-')}",
                title=f"{model}: PSI of {feature} (training baseline vs serving)",
                description=(
                    f"{model}: data drift of {feature} (PSI above {config.feature_drift_psi:g} "
                    f"for {sustained} h)"
                ),
                metric=self._metric(
                    FEATURE_DRIFT, model, "Maximum", **{FEATURE_DIMENSION: feature}
                ),
                threshold=config.feature_drift_psi,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=sustained,
            )
            for feature in INPUT_FEATURES
        ]
        alarms.append(
            self._alerts.alarm(
                area=AREA,
                name=f"{model}-prediction-drift",
                title=f"{model}: PSI of the top score (training baseline vs serving)",
                description=(
                    f"{model}: prediction drift (PSI of the top score above "
                    f"{config.prediction_drift_psi:g} for {sustained} h)"
                ),
                metric=self._metric(PREDICTION_DRIFT, model, "Maximum"),
                threshold=config.prediction_drift_psi,
                comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=sustained,
            )
        )
        return alarms

    def _accuracy_alarms(self, model: str) -> None:
        config = self._config
        self._alerts.alarm(
            area=AREA,
            name=f"{model}-hit-rate",
            title=f"{model}: hit rate at {config.top_k}",
            description=(
                f"{model}: fewer than {config.min_hit_rate:.1%} of recommendations led to a "
                f"play within {config.outcome_hours} h, three hours running"
            ),
            metric=self._metric(HIT_RATE_AT_K, model, "Average"),
            threshold=config.min_hit_rate,
            comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=3,
        )
        self._alerts.alarm(
            area=AREA,
            name=f"{model}-baseline-missing",
            title=f"{model}: versions served without a drift baseline",
            description=(
                f"{model}: a served version has no baseline.json, so its drift is not watched"
            ),
            metric=self._metric(BASELINE_MISSING, model, "Maximum"),
            threshold=0,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        )

    def _retrain_on_drift(
        self, model: str, drift: list[cloudwatch.IAlarm], publisher: lambda_.IFunction
    ) -> events.Rule:
        ident = "".join(part.title() for part in model.split("-"))
        sustained = cloudwatch.CompositeAlarm(
            self,
            f"{ident}DriftSustained",
            composite_alarm_name=alarm_name(self._name_prefix, AREA, f"{model}-drift-sustained"),
            alarm_description=(
                f"{model}: some input or the top score has drifted for "
                f"{self._config.drift_sustained_hours} h; retraining is requested"
            ),
            alarm_rule=cloudwatch.AlarmRule.any_of(*drift),
            # Its children notify the alert topic; this one only starts the retraining.
            actions_enabled=False,
        )
        return events.Rule(
            self,
            f"{ident}Retrain",
            description=f"Sustained drift of {model} requests its retraining",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=[sustained.alarm_arn],
                detail={"state": {"value": ["ALARM"]}},
            ),
            targets=[
                targets.LambdaFunction(
                    publisher,
                    event=events.RuleTargetInput.from_object(
                        {
                            "signal": RETRAIN_SIGNAL,
                            "params": {"model": model, "reason": "drift"},
                            "idempotency_key": events.EventField.from_path("$.id"),
                        }
                    ),
                    dead_letter_queue=self.dead_letters,
                    retry_attempts=8,
                    max_event_age=Duration.hours(2),
                )
            ],
        )


def grant_put_model_metrics(grantee: iam.IGrantable) -> None:
    """cloudwatch:PutMetricData, only into the model-monitoring namespace: the action takes no
    resource, so the namespace condition is what limits it."""
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],
            conditions={"StringEquals": {"cloudwatch:namespace": NAMESPACE}},
        )
    )
    acknowledge_wildcard_grants(
        grantee.grant_principal,
        {
            r"Resource::\*": (
                f"cloudwatch:PutMetricData has no resource type; the cloudwatch:namespace "
                f"condition admits only {NAMESPACE}."
            )
        },
    )
