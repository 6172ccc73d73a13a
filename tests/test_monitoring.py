"""Monitoring: a dashboard per area, an alarm for what breaks each container (all reaching the
alert topic, all on the overview), ML monitoring that asks for retraining, and Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Match, Template

from cdk_constructs.alerting import AlertTarget
from cdk_constructs.model_monitoring import ModelMonitoring
from cdk_constructs.model_serving import METRICS_PORT, SHADOW_MODEL_SUFFIX, render_collector_config
from cdk_constructs.monitoring import monitor_emr
from cdk_constructs.prometheus import (
    GrafanaWorkspace,
    PrometheusWorkspace,
    remote_write_parameter_name,
)
from jobs.monitoring.names import FEATURE_DRIFT, NAMESPACE, PREDICTION_DRIFT
from platform_config.model import CanaryConfig, ModelMonitoringConfig
from serving.recommender_service.service import SHADOW_MODEL_NAME_SUFFIX
from stacks.serving_stack import COLLECTOR_CONFIG
from tests.test_emr import instance_role_statements
from training.recommender.inputs import INPUT_FEATURES

AREAS = (
    "streaming",
    "processing",
    "data",
    "metadata",
    "workflows",
    "training",
    "serving",
    "experimentation",
)


def resources(template: dict, cfn_type: str) -> dict[str, dict]:
    return {
        lid: r["Properties"] for lid, r in template["Resources"].items() if r["Type"] == cfn_type
    }


def alarms_by_name(synth, stack: str) -> dict[str, dict]:
    return {
        p["AlarmName"]: p
        for p in resources(synth.template_json(stack), "AWS::CloudWatch::Alarm").values()
        if isinstance(p.get("AlarmName"), str)
    }


def every_alarm_name(synth) -> list[str]:
    names = []
    for stack in synth.platform.stacks:
        for props in resources(
            synth.template_json(_short(synth, stack)), "AWS::CloudWatch::Alarm"
        ).values():
            names.append(props.get("AlarmName"))
    return names


def _short(synth, stack) -> str:
    return stack.stack_name.removeprefix(f"{synth.config.resource_prefix}-")


def test_every_area_has_a_dashboard_and_the_overview_links_them(each_env):
    prefix = each_env.config.resource_prefix
    dashboards = {}
    for stack in each_env.platform.stacks:
        for props in resources(
            each_env.template_json(_short(each_env, stack)), "AWS::CloudWatch::Dashboard"
        ).values():
            dashboards[props["DashboardName"]] = json.dumps(props["DashboardBody"])
    for area in AREAS:
        assert f"{prefix}-{area}" in dashboards
        assert f"#dashboards:name={prefix}-{area}" in dashboards[f"{prefix}-overview"]


def test_every_alarm_is_named_once_and_listed_on_the_overview(each_env):
    prefix = each_env.config.resource_prefix
    named = [n for n in every_alarm_name(each_env) if n is not None]
    assert len(named) == len(set(named))
    assert all(n.startswith(f"{prefix}-") and len(n) <= 255 for n in named)
    (overview,) = resources(each_env.template_json("alerts"), "AWS::CloudWatch::Dashboard").values()
    body = json.dumps(overview["DashboardBody"])
    missing = [n for n in named if f":alarm:{n}" not in body]
    assert missing == []


def test_unnamed_alarms_are_only_the_scaling_policies_own(each_env):
    for stack in each_env.platform.stacks:
        for props in resources(
            each_env.template_json(_short(each_env, stack)), "AWS::CloudWatch::Alarm"
        ).values():
            if "AlarmName" not in props:
                actions = json.dumps(props["AlarmActions"])
                assert "Policy" in actions, props


def test_kafka_alarms_cover_every_broker_and_the_streaming_consumer(each_env):
    config = each_env.config
    alarms = alarms_by_name(each_env, "processing")
    prefix = f"{config.resource_prefix}-streaming"
    disk = alarms[f"{prefix}-kafka-disk-used"]
    brokers = config.kafka.brokers_per_zone * len(config.availability_zones)
    broker_ids = sorted(
        d["Value"]
        for m in disk["Metrics"]
        if "MetricStat" in m
        for d in m["MetricStat"]["Metric"]["Dimensions"]
        if d["Name"] == "Broker ID"
    )
    assert broker_ids == sorted(str(b) for b in range(1, brokers + 1))
    assert disk["Threshold"] == config.monitoring.msk_disk_used_percent
    lag = alarms[f"{prefix}-flink-consumer-lag"]
    dims = {d["Name"]: d["Value"] for d in lag["Dimensions"]}
    assert dims["Consumer Group"] == each_env.platform.processing.flink_consumer_group
    assert dims["Topic"] == config.kafka.topics[0].name
    assert lag["Threshold"] == config.monitoring.flink_consumer_lag
    assert alarms[f"{prefix}-kafka-offline-partitions"]["MetricName"] == "OfflinePartitionsCount"


def test_emr_alarms_watch_both_clusters_and_idle_cost_only_without_an_idle_timeout(each_env):
    config = each_env.config
    alarms = alarms_by_name(each_env, "processing")
    prefix = config.resource_prefix
    for area, label in (("streaming", "flink"), ("processing", "spark")):
        assert f"{prefix}-{area}-{label}-apps-failed" in alarms
        assert f"{prefix}-{area}-{label}-unhealthy-nodes" in alarms
    idle = alarms.get(f"{prefix}-processing-spark-idle")
    assert (idle is None) == bool(config.spark.idle_timeout_minutes)
    assert f"{prefix}-streaming-flink-idle" not in alarms


def test_idle_alarm_needs_the_whole_hours_idle():
    stack = Stack(App(), "Bare")
    alerts = AlertTarget(stack, name_prefix="bare", area="processing")
    monitor_emr(alerts, cluster_id="j-1", label="spark", idle_hours=5, area="processing")
    Template.from_stack(stack).has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "AlarmName": "bare-processing-spark-idle",
            "MetricName": "IsIdle",
            "Statistic": "Minimum",
            "Period": 3600,
            "EvaluationPeriods": 5,
            "Dimensions": [{"Name": "JobFlowId", "Value": "j-1"}],
        },
    )


def test_keyspaces_alarms_name_the_operations_serving_uses(each_env):
    alarms = alarms_by_name(each_env, "data")
    prefix = f"{each_env.config.resource_prefix}-data-keyspaces"
    history = alarms[f"{prefix}-member_history-select-throttles"]
    assert history["MetricName"] == "ReadThrottleEvents"
    assert {d["Name"]: d["Value"] for d in history["Dimensions"]} == {
        "Keyspace": each_env.platform.data.online_store.keyspace_name,
        "TableName": "member_history",
        "Operation": "SELECT",
    }
    assert alarms[f"{prefix}-predictions-insert-throttles"]["MetricName"] == "WriteThrottleEvents"


def test_every_platform_function_alarms_on_errors(each_env):
    for stack in each_env.platform.stacks:
        template = each_env.template_json(_short(each_env, stack))
        functions = [
            lid
            for lid, r in template["Resources"].items()
            if r["Type"] == "AWS::Lambda::Function"
            and r["Properties"]
            .get("Environment", {})
            .get("Variables", {})
            .get("POWERTOOLS_SERVICE_NAME")
        ]
        watched = json.dumps(resources(template, "AWS::CloudWatch::Alarm"))
        for lid in functions:
            assert f'"Ref": "{lid}"' in watched, f"{stack.stack_name}: {lid} has no alarm"


def test_every_workflow_alarms_on_failed_timed_out_and_aborted_runs(each_env):
    alarms = alarms_by_name(each_env, "orchestration")
    prefix = f"{each_env.config.resource_prefix}-workflows-workflow"
    for workflow in each_env.platform.orchestration.orchestrator.state_machines:
        for metric in ("ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"):
            assert any(
                name.startswith(f"{prefix}-{workflow}-") and json.dumps(props).count(metric)
                for name, props in alarms.items()
            ), (workflow, metric)


def test_training_failures_and_spot_interruptions_reach_the_alert_topic(each_env):
    rules = resources(each_env.template_json("orchestration"), "AWS::Events::Rule")
    prefix = each_env.config.resource_prefix
    patterns = {
        json.dumps(p["EventPattern"]["detail"], sort_keys=True): p
        for p in rules.values()
        if p.get("EventPattern", {}).get("source") == ["aws.sagemaker"]
    }
    details = [json.loads(d) for d in patterns]
    assert {
        "TrainingJobStatus": ["Failed"],
        "TrainingJobName": [{"prefix": f"{prefix}-"}],
    } in details
    assert {
        "SecondaryStatus": ["Interrupted"],
        "TrainingJobName": [{"prefix": f"{prefix}-"}],
    } in details
    for rule in patterns.values():
        (target,) = rule["Targets"]
        assert f"{prefix}-alerts" in json.dumps(target["Arn"])
        assert "DeadLetterConfig" in target


# ML monitoring


def test_drift_alarms_per_served_model_and_input_wait_for_sustained_drift(each_env):
    config = each_env.config.monitoring.models
    alarms = alarms_by_name(each_env, "orchestration")
    prefix = f"{each_env.config.resource_prefix}-training"
    for model in each_env.config.serving.models:
        for feature in INPUT_FEATURES:
            alarm = alarms[f"{prefix}-{model.name}-drift-{feature.replace('_', '-')}"]
            assert alarm["Namespace"] == NAMESPACE
            assert alarm["MetricName"] == FEATURE_DRIFT
            assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == {
                "Model": model.name,
                "Feature": feature,
            }
            assert alarm["Threshold"] == config.feature_drift_psi
            assert alarm["EvaluationPeriods"] == config.drift_sustained_hours
            assert alarm["DatapointsToAlarm"] == config.drift_sustained_hours
            assert alarm["Period"] == 3600
        drift = alarms[f"{prefix}-{model.name}-prediction-drift"]
        assert drift["MetricName"] == PREDICTION_DRIFT
        assert drift["Threshold"] == config.prediction_drift_psi
        hit_rate = alarms[f"{prefix}-{model.name}-hit-rate"]
        assert hit_rate["ComparisonOperator"] == "LessThanThreshold"
        assert hit_rate["Threshold"] == config.min_hit_rate


def test_sustained_drift_requests_retraining_through_the_signal_publisher(each_env):
    template = each_env.template_json("orchestration")
    prefix = each_env.config.resource_prefix
    composites = resources(template, "AWS::CloudWatch::CompositeAlarm")
    publisher = each_env.platform.orchestration.orchestrator.signal_bus.publisher.function
    publisher_id = each_env.platform.orchestration.get_logical_id(publisher.node.default_child)
    for model in each_env.config.serving.models:
        (composite_id,) = [
            lid
            for lid, p in composites.items()
            if p["AlarmName"] == f"{prefix}-training-{model.name}-drift-sustained"
        ]
        # The rule names its children by ARN, whose logical ids carry the alarm names.
        rule_text = json.dumps(composites[composite_id]["AlarmRule"]).lower()
        children = [f"{model.name}drift{feature.replace('_', '')}" for feature in INPUT_FEATURES]
        for child in [*children, f"{model.name}predictiondrift"]:
            assert child.replace("-", "") in rule_text
        assert composites[composite_id]["ActionsEnabled"] is False
        (rule,) = [
            p
            for p in resources(template, "AWS::Events::Rule").values()
            if p.get("EventPattern", {}).get("source") == ["aws.cloudwatch"]
            and json.dumps(p["EventPattern"]["resources"]).count(composite_id)
        ]
        assert rule["EventPattern"]["detail"] == {"state": {"value": ["ALARM"]}}
        (target,) = rule["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": [publisher_id, "Arn"]}
        payload = json.loads(target["InputTransformer"]["InputTemplate"].replace("<id>", '"x"'))
        assert payload == {
            "signal": "retrain-requested",
            "params": {"model": model.name, "reason": "drift"},
            "idempotency_key": "x",
        }
        assert target["InputTransformer"]["InputPathsMap"] == {"id": "$.id"}
        assert "DeadLetterConfig" in target
    permissions = [
        p
        for p in resources(template, "AWS::Lambda::Permission").values()
        if p["FunctionName"] == {"Fn::GetAtt": [publisher_id, "Arn"]}
    ]
    assert all(p["Principal"] == "events.amazonaws.com" and "SourceArn" in p for p in permissions)


def test_the_model_monitor_runs_hourly_on_the_spark_cluster(each_env):
    orchestration = each_env.platform.orchestration
    assert "monitor-models" in orchestration.orchestrator.state_machines
    schedules = resources(each_env.template_json("orchestration"), "AWS::Scheduler::Schedule")
    assert any(
        p["ScheduleExpression"] == f"cron({each_env.config.monitoring.models.cron})"
        and "monitormodels" in json.dumps(p["Target"])
        for p in schedules.values()
    )
    args = each_env.platform.processing.model_monitor_args
    assert args[args.index("--k") + 1] == str(each_env.config.monitoring.models.top_k)
    assert any(a.endswith("jobs/batch/model_monitor.py") for a in args)
    assert Path(__file__).resolve().parent.parent.joinpath("jobs/batch/model_monitor.py").is_file()


def test_spark_may_publish_only_model_monitoring_metrics(each_env):
    statements = [
        s
        for s in instance_role_statements(each_env, "Spark")
        if s["Action"] == "cloudwatch:PutMetricData"
    ]
    assert statements == [
        {
            "Action": "cloudwatch:PutMetricData",
            "Condition": {"StringEquals": {"cloudwatch:namespace": NAMESPACE}},
            "Effect": "Allow",
            "Resource": "*",
        }
    ]


def test_model_monitoring_on_its_own_covers_each_model():
    stack = Stack(App(), "Bare")
    from aws_cdk import aws_lambda as lambda_

    publisher = lambda_.Function.from_function_arn(
        stack, "Publisher", "arn:aws:lambda:us-east-1:111111111111:function:publisher"
    )
    ModelMonitoring(
        stack,
        "ModelMonitoring",
        name_prefix="bare",
        models=["ranker", "reranker"],
        config=ModelMonitoringConfig(drift_sustained_hours=2, feature_drift_psi=0.3),
        alerts=AlertTarget(stack, name_prefix="bare", area="workflows"),
        signal_publisher=publisher,
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::CloudWatch::CompositeAlarm", 2)
    template.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "AlarmName": "bare-training-reranker-drift-history-length",
            "Threshold": 0.3,
            "EvaluationPeriods": 2,
        },
    )


# Prometheus and the serving tasks


def test_prometheus_rules_page_through_the_alert_topic_with_the_canary_thresholds(each_env):
    template = each_env.template_json("alerts")
    canary = each_env.config.serving.canary
    (workspace,) = resources(template, "AWS::APS::Workspace").values()
    definition = json.dumps(workspace["AlertManagerDefinition"])
    assert "sns_configs" in definition
    assert "AlertingTopic" in definition
    assert workspace["LoggingConfiguration"]["LogGroupArn"]
    (rules,) = resources(template, "AWS::APS::RuleGroupsNamespace").values()
    groups = json.loads(rules["Data"])["groups"]
    by_alert = {r["alert"]: r for g in groups for r in g["rules"]}
    assert by_alert["ServingErrorRate"]["expr"].endswith(f"> {canary.alarm_5xx_percent:g}")
    assert by_alert["ServingP99Latency"]["expr"].endswith(f"> {canary.alarm_p99_latency_ms}")
    assert 'outcome="error"' in by_alert["ServingErrorRate"]["expr"]
    parameters = {p["Name"] for p in resources(template, "AWS::SSM::Parameter").values()}
    assert remote_write_parameter_name(each_env.config.resource_prefix) in parameters


def test_the_alert_topic_and_key_admit_prometheus(each_env):
    text = json.dumps(each_env.template_json("alerts"))
    assert text.count("aps.amazonaws.com") >= 2


def test_serving_tasks_run_the_pinned_collector_beside_the_app(each_env):
    template = each_env.template_json("serving-models-1")
    (task,) = resources(template, "AWS::ECS::TaskDefinition").values()
    containers = {c["Name"]: c for c in task["ContainerDefinitions"]}
    collector = containers["Collector"]
    assert collector["Image"] == each_env.config.monitoring.otel_collector_image
    assert collector["Essential"] is False
    env = {e["Name"]: e["Value"] for e in collector["Environment"]}
    # The configuration file, its placeholders filled in at synth.
    config = env["AOT_CONFIG_CONTENT"]
    parts = config["Fn::Join"][1] if isinstance(config, dict) else [config]
    rendered = "".join(p if isinstance(p, str) else "<ref>" for p in parts)
    assert "${env:" not in rendered
    template_text = COLLECTOR_CONFIG.read_text()
    parameter = remote_write_parameter_name(each_env.config.resource_prefix)
    assert "${env:AMP_REMOTE_WRITE_URL}" in template_text
    expected = (
        template_text.replace("${env:AWS_REGION}", each_env.config.region)
        .replace("${env:AMP_REMOTE_WRITE_URL}", f"{{{{resolve:ssm:{parameter}}}}}")
        .replace("${env:METRICS_PORT}", str(METRICS_PORT))
    )
    assert rendered == expected
    app_env = {e["Name"]: e["Value"] for e in containers["App"]["Environment"]}
    assert app_env["METRICS_PORT"] == str(METRICS_PORT)
    # The metrics port is for the collector alone.
    assert [p["ContainerPort"] for p in containers["App"]["PortMappings"]] == [8080]
    assert "predictions/" in json.dumps(app_env["PREDICTION_LOG_URI"])


def test_serving_task_role_writes_its_own_prediction_logs_and_metrics_only(each_env):
    template = each_env.template_json("serving-models-1")
    statements = [
        s
        for p in resources(template, "AWS::IAM::Policy").values()
        for s in p["PolicyDocument"]["Statement"]
    ]
    text = json.dumps(statements)
    for model in each_env.config.serving.models[:1]:
        assert f"predictions/model={model.name}/*" in text
        assert f"predictions/model={model.name}{SHADOW_MODEL_SUFFIX}/*" in text
    (remote_write,) = [s for s in statements if s["Action"] == "aps:RemoteWrite"]
    assert remote_write["Resource"] == (
        f"{{{{resolve:ssm:/{each_env.config.resource_prefix}/monitoring/prometheus-workspace-arn}}}}"
    )


def test_shadow_suffix_matches_the_service():
    assert SHADOW_MODEL_SUFFIX == SHADOW_MODEL_NAME_SUFFIX


def test_grafana_is_off_unless_enabled(each_env):
    assert each_env.config.monitoring.grafana is False
    assert resources(each_env.template_json("alerts"), "AWS::Grafana::Workspace") == {}


def test_grafana_signs_in_through_identity_center_and_queries_only_its_workspace():
    stack = Stack(App(), "Bare")
    GrafanaWorkspace(
        stack,
        "Grafana",
        name_prefix="bare",
        workspace_arn="arn:aws:aps:us-east-1:111111111111:workspace/ws-1",
    )
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::Grafana::Workspace",
        {
            "AuthenticationProviders": ["AWS_SSO"],
            "PermissionType": "CUSTOMER_MANAGED",
            "AccountAccessType": "CURRENT_ACCOUNT",
            "DataSources": ["PROMETHEUS", "CLOUDWATCH"],
        },
    )
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Action": Match.array_with(["aps:QueryMetrics"]),
                                "Resource": "arn:aws:aps:us-east-1:111111111111:workspace/ws-1",
                            }
                        )
                    ]
                )
            }
        },
    )


def test_prometheus_workspace_on_its_own():
    stack = Stack(App(), "Bare")
    from aws_cdk import aws_sns as sns

    topic = sns.Topic(stack, "Topic")
    PrometheusWorkspace(
        stack,
        "Prometheus",
        name_prefix="bare",
        alert_topic=topic,
        canary=CanaryConfig(alarm_5xx_percent=2),
        log_retention_days=7,
    )
    template = Template.from_stack(stack)
    template.has_resource_properties("AWS::APS::Workspace", {"Alias": "bare-metrics"})
    (rules,) = resources(template.to_json(), "AWS::APS::RuleGroupsNamespace").values()
    assert re.search(r"> 2$", json.loads(rules["Data"])["groups"][0]["rules"][0]["expr"])


@pytest.mark.parametrize(
    ("prometheus", "grafana", "expected"),
    [
        (False, True, set()),
        (True, False, {"AWS::APS::Workspace"}),
        (True, True, {"AWS::APS::Workspace", "AWS::Grafana::Workspace"}),
    ],
)
def test_the_switches_decide_what_the_alerts_stack_holds(prometheus, grafana, expected):
    from platform_config import load_config
    from stacks.alerts_stack import AlertsStack

    config = load_config(env="dev")
    monitoring = config.monitoring.model_copy(update={"prometheus": prometheus, "grafana": grafana})
    stack = AlertsStack(
        App(), "Alerts", config=config.model_copy(update={"monitoring": monitoring})
    )
    types = {r["Type"] for r in Template.from_stack(stack).to_json()["Resources"].values()}
    assert types & {"AWS::APS::Workspace", "AWS::Grafana::Workspace"} == expected


def test_a_collector_placeholder_left_unset_stops_synth():
    with pytest.raises(ValueError, match="unset variables: SECRET"):
        render_collector_config("a: ${env:SECRET}", {"METRICS_PORT": "9464"})
