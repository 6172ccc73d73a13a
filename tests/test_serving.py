"""Model serving and delivery: services behind one load balancer, ECS-native canaries judged
by the canary-analysis hook, and the workflow that delivers approved versions."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sys

import jsonata
import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Template

from cdk_constructs.delivery import JUDGE_SOURCE
from cdk_constructs.model_serving import NO_VERSION, VERSION_PARAMETERS, ServingFront
from platform_config import load_config
from stacks.serving_stack import model_groups
from tests.test_experimentation import task_role_statements


def models_template(synth) -> dict:
    return synth.template_json("serving-models-1")


def of_type(template: dict, cfn_type: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == cfn_type}


def only(template: dict, cfn_type: str) -> tuple[str, dict]:
    ((lid, resource),) = of_type(template, cfn_type).items()
    return lid, resource


def rendered(value) -> str:
    """A CloudFormation string value with each reference replaced by a distinct placeholder."""
    if isinstance(value, str):
        return value
    counter = itertools.count()
    return "".join(p if isinstance(p, str) else f"REF{next(counter)}" for p in value["Fn::Join"][1])


def test_dev_and_prod_serve_the_recommender_from_one_model_stack(each_env):
    (stack,) = each_env.platform.model_services
    assert stack.stack_name == f"{each_env.config.resource_prefix}-serving-models-1"
    _, service = only(models_template(each_env), "AWS::ECS::Service")
    assert service["Properties"]["ServiceName"] == (
        f"{each_env.config.resource_prefix}-recommender"
    )


def test_the_load_balancer_is_internal_logged_and_open_only_to_the_vpc(each_env):
    template = each_env.template_json("serving")
    _, balancer = only(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    properties = balancer["Properties"]
    assert properties["Scheme"] == "internal"
    attributes = {a["Key"]: a["Value"] for a in properties["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert "private" in json.dumps(properties["Subnets"]) or "compute" in json.dumps(
        properties["Subnets"]
    )
    _, listener = only(template, "AWS::ElasticLoadBalancingV2::Listener")
    # No certificate in the shipped configs: HTTP, reachable from the VPC range only.
    assert listener["Properties"]["Port"] == 80
    (action,) = listener["Properties"]["DefaultActions"]
    assert action["FixedResponseConfig"]["StatusCode"] == "404"
    groups = of_type(template, "AWS::EC2::SecurityGroup")
    ingress = [
        rule
        for group in groups.values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    ]
    assert len(ingress) == 1 + len(each_env.config.serving.allowed_cidrs)
    assert ingress[0]["FromPort"] == 80
    assert "Vpc" in json.dumps(ingress[0]["CidrIp"])


def test_a_certificate_gives_an_https_listener_with_a_modern_tls_policy():
    stack = Stack(App(), "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2)
    ServingFront(
        stack,
        "Serving",
        name_prefix="bare",
        vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        internal=True,
        certificate_arn=(
            "arn:aws:acm:eu-west-1:123456789012:certificate/0f4b5c6d-1a2b-3c4d-5e6f-7a8b9c0d1e2f"
        ),
        allowed_cidrs=["192.168.0.0/16"],
        logs_bucket=s3.Bucket(stack, "Logs"),
    )
    template = Template.from_stack(stack).to_json()
    _, listener = only(template, "AWS::ElasticLoadBalancingV2::Listener")
    assert listener["Properties"]["Port"] == 443
    assert listener["Properties"]["Protocol"] == "HTTPS"
    assert listener["Properties"]["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    ports = {
        (rule["FromPort"], rule["CidrIp"] if isinstance(rule["CidrIp"], str) else "vpc")
        for group in of_type(template, "AWS::EC2::SecurityGroup").values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    }
    assert ports == {(443, "vpc"), (443, "192.168.0.0/16")}


def test_services_deploy_as_canaries_judged_by_the_hook_with_alarm_rollback(each_env):
    template = models_template(each_env)
    canary = each_env.config.serving.canary
    _, service = only(template, "AWS::ECS::Service")
    deployment = service["Properties"]["DeploymentConfiguration"]
    assert deployment["Strategy"] == "CANARY"
    assert deployment["CanaryConfiguration"] == {
        "CanaryPercent": canary.step_percent,
        "CanaryBakeTimeInMinutes": canary.step_bake_minutes,
    }
    assert deployment["BakeTimeInMinutes"] == canary.bake_minutes
    assert deployment["MinimumHealthyPercent"] == 100
    prefix = f"{each_env.config.resource_prefix}-serving-recommender"
    alarms = [
        lid
        for lid, alarm in of_type(template, "AWS::CloudWatch::Alarm").items()
        if alarm["Properties"].get("AlarmName") in (f"{prefix}-error-rate", f"{prefix}-p99-latency")
    ]
    assert len(alarms) == 2
    assert deployment["Alarms"]["Enable"] is True
    assert deployment["Alarms"]["Rollback"] is True
    assert sorted(a["Ref"] for a in deployment["Alarms"]["AlarmNames"]) == sorted(alarms)
    (hook,) = deployment["LifecycleHooks"]
    assert hook["LifecycleStages"] == ["PRODUCTION_TRAFFIC_SHIFT"]
    judge_id = hook["HookTargetArn"]["Fn::GetAtt"][0]
    judge = template["Resources"][judge_id]
    assert judge["Properties"]["Handler"] == "handler.handler"
    hook_role = template["Resources"][hook["RoleArn"]["Fn::GetAtt"][0]]
    assert hook_role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ecs.amazonaws.com"
    }


def test_rollback_alarms_watch_both_target_groups_at_the_configured_thresholds(each_env):
    canary = each_env.config.serving.canary
    alarms = {
        lid: a["Properties"]
        for lid, a in of_type(models_template(each_env), "AWS::CloudWatch::Alarm").items()
    }
    (errors,) = [a for lid, a in alarms.items() if "ErrorRate" in lid]
    (latency,) = [a for lid, a in alarms.items() if "Latency" in lid]
    assert errors["Threshold"] == canary.alarm_5xx_percent
    assert latency["Threshold"] == canary.alarm_p99_latency_ms
    for alarm in (errors, latency):
        expression = next(m for m in alarm["Metrics"] if "Expression" in m)["Expression"]
        assert "blue" in expression
        assert "green" in expression
        assert alarm["TreatMissingData"] == "notBreaching"


def test_blue_and_green_target_groups_behind_the_models_path(each_env):
    template = models_template(each_env)
    groups = of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup")
    assert len(groups) == 2
    for group in groups.values():
        properties = group["Properties"]
        assert properties["HealthCheckPath"] == "/recommender/health/ready"
        assert properties["TargetType"] == "ip"
        assert properties["Port"] == 8080
    rule_id, rule = only(template, "AWS::ElasticLoadBalancingV2::ListenerRule")
    assert rule["Properties"]["Conditions"] == [
        {"Field": "path-pattern", "PathPatternConfig": {"Values": ["/recommender/*"]}}
    ]
    (forward,) = rule["Properties"]["Actions"]
    blue = forward["TargetGroupArn"]["Ref"]
    _, service = only(template, "AWS::ECS::Service")
    (balanced,) = service["Properties"]["LoadBalancers"]
    assert balanced["TargetGroupArn"] == {"Ref": blue}
    advanced = balanced["AdvancedConfiguration"]
    (green,) = set(groups) - {blue}
    assert advanced["AlternateTargetGroupArn"] == {"Ref": green}
    assert advanced["ProductionListenerRule"] == {"Ref": rule_id}


def test_the_served_version_is_a_set_of_stack_parameters(each_env):
    template = models_template(each_env)
    parameters = template["Parameters"]
    for parameter in VERSION_PARAMETERS:
        assert parameters[f"Recommender{parameter.suffix}"]["Default"] == parameter.default
    _, task = only(template, "AWS::ECS::TaskDefinition")
    (container,) = [c for c in task["Properties"]["ContainerDefinitions"] if c["Name"] == "App"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["MODEL_VERSION"] == {"Ref": "RecommenderVersion"}
    assert environment["MODEL_ARTIFACT_URI"] == {"Ref": "RecommenderArtifactUri"}
    assert environment["MODEL_TRAINING_DATE"] == {"Ref": "RecommenderTrainingDate"}
    assert environment["MODEL_METRICS"] == {"Ref": "RecommenderMetrics"}
    assert environment["CANDIDATE_MODEL_VERSION"] == {"Ref": "RecommenderCandidateVersion"}
    assert environment["SHADOW_FRACTION"] == str(each_env.config.serving.models[0].shadow_fraction)
    assert environment["URL_PREFIX"] == "/recommender"
    assert container["ReadonlyRootFilesystem"] is True
    _, service = only(template, "AWS::ECS::Service")
    tags = {t["Key"]: t["Value"] for t in service["Properties"]["Tags"]}
    assert tags["ml-platform:model-version"] == {"Ref": "RecommenderVersion"}


def test_no_task_runs_before_a_first_version_is_delivered(each_env):
    template = models_template(each_env)
    (condition,) = template["Conditions"].values()
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "RecommenderVersion"}, NO_VERSION]}]}
    model = each_env.config.serving.models[0]
    (name,) = template["Conditions"]
    _, service = only(template, "AWS::ECS::Service")
    assert service["Properties"]["DesiredCount"] == {"Fn::If": [name, model.min_tasks, 0]}
    _, target = only(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["Properties"]["MinCapacity"] == {"Fn::If": [name, model.min_tasks, 0]}
    assert target["Properties"]["MaxCapacity"] == {"Fn::If": [name, model.max_tasks, 0]}


def test_tasks_scale_on_cpu_and_requests(each_env):
    model = each_env.config.serving.models[0]
    policies = [
        p["Properties"]
        for p in of_type(
            models_template(each_env), "AWS::ApplicationAutoScaling::ScalingPolicy"
        ).values()
    ]
    (cpu,) = [p for p in policies if p["PolicyType"] == "TargetTrackingScaling"]
    assert (
        cpu["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == model.target_cpu_percent
    )
    steps = [p for p in policies if p["PolicyType"] == "StepScaling"]
    assert steps


def test_tasks_are_reachable_only_from_the_load_balancer(each_env):
    template = models_template(each_env)
    ingress = of_type(template, "AWS::EC2::SecurityGroupIngress")
    (rule,) = ingress.values()
    assert rule["Properties"]["FromPort"] == 8080
    assert "SourceSecurityGroupId" in rule["Properties"]
    _, group = only(template, "AWS::EC2::SecurityGroup")
    egress_ports = sorted(r["FromPort"] for r in group["Properties"]["SecurityGroupEgress"])
    assert egress_ports == [443, 9142]


def test_the_task_role_reads_its_models_and_its_tables_only(each_env):
    template = models_template(each_env)
    statements = task_role_statements(template)
    by_action = {json.dumps(s["Action"]): json.dumps(s["Resource"]) for s in statements}
    assert "keyspace/ml_platform_" in by_action['"cassandra:Select"']
    assert "/table/member_history" in by_action['"cassandra:Select"']
    assert "/table/predictions" in by_action['"cassandra:Modify"']
    assert "feature-group/" in by_action['"sagemaker:GetRecord"']
    s3_resources = " ".join(r for a, r in by_action.items() if "s3:" in a)
    assert f"models/{each_env.config.resource_prefix}-recommender/*" in s3_resources
    assert not any("s3:Delete" in a for a in by_action)
    # It writes only its prediction log, and nowhere in the artifacts bucket.
    (put,) = [s for s in statements if "s3:PutObject" in json.dumps(s["Action"])]
    written = json.dumps(put["Resource"])
    assert "-raw-" in written
    assert "-artifacts-" not in written
    assert written.count("/predictions/model=recommender") == 2


def realistic(value: dict) -> str:
    """The rendered string with each reference replaced by a value of the shape it resolves
    to (target group ARNs and full names of the same group agree)."""

    def resolve(part: dict) -> str:
        text = json.dumps(part)
        if "LoadBalancerFullName" in text:
            return "app/serving/0123456789abcdef"
        group = re.search(r"(Blue|Green)TargetGroup", text).group(1).lower()
        if "TargetGroupFullName" in text:
            return f"targetgroup/{group}/0123456789abcdef"
        return (
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
            f"targetgroup/{group}/0123456789abcdef"
        )

    return "".join(p if isinstance(p, str) else resolve(p) for p in value["Fn::Join"][1])


def _judge():
    spec = importlib.util.spec_from_file_location("judge_under_test", JUDGE_SOURCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_judge_gets_a_valid_config_with_the_environments_thresholds(each_env):
    template = models_template(each_env)
    (judge,) = [
        f
        for f in of_type(template, "AWS::Lambda::Function").values()
        if "CANARY_CONFIG" in f["Properties"]["Environment"]["Variables"]
    ]
    config = json.loads(realistic(judge["Properties"]["Environment"]["Variables"]["CANARY_CONFIG"]))
    parsed = _judge().parse_config(config)
    canary = each_env.config.serving.canary
    assert config["analysis_minutes"] == canary.analysis_minutes
    assert config["min_samples"] == canary.min_samples
    assert config["confidence"] == canary.confidence
    assert config["model_name"] == "recommender"
    assert config["app_namespace"] == "MLPlatform/Serving"
    assert len(config["target_groups"]) == 2
    assert parsed is not None


def delivery_definition(synth) -> dict:
    template = synth.template_json("serving")
    (machine,) = [
        m
        for m in of_type(template, "AWS::StepFunctions::StateMachine").values()
        if m["Properties"]["StateMachineName"] == f"{synth.config.resource_prefix}-delivery"
    ]
    return json.loads(rendered(machine["Properties"]["DefinitionString"]))


def test_an_approval_of_a_served_model_starts_delivery(each_env):
    template = each_env.template_json("serving")
    (rule,) = [
        r["Properties"]
        for r in of_type(template, "AWS::Events::Rule").values()
        if r["Properties"]["EventPattern"].get("source") == ["aws.sagemaker"]
    ]
    assert rule["EventPattern"]["detail"] == {
        "ModelPackageGroupName": [f"{each_env.config.resource_prefix}-recommender"],
        "ModelApprovalStatus": ["Approved"],
    }
    (target,) = rule["Targets"]
    assert "DeadLetterConfig" in target


def test_delivery_sets_the_version_on_the_stack_and_keeps_everything_else(each_env):
    states = delivery_definition(each_env)["States"]
    update = states["Set served version"]
    assert update["Resource"].endswith(":states:::aws-sdk:cloudformation:updateStack")
    arguments = update["Arguments"]
    assert arguments["UsePreviousTemplate"] is True
    assert "UsePreviousValue" in arguments["Parameters"]
    # The workflow names every parameter of the model's stack (CloudFormation requires it).
    lookup = json.loads(
        states["Describe version"]["Assign"]["target"]
        .split("$lookup(", 1)[1]
        .rsplit(", $states", 1)[0]
    )
    (target,) = lookup.values()
    assert sorted(target["parameters"]) == sorted(models_template(each_env)["Parameters"])
    assert target["stack"] == f"{each_env.config.resource_prefix}-serving-models-1"
    outcome = states["Rolled out?"]
    assert {c["Next"] for c in outcome["Choices"]} == {
        "Wait for the rollout",
        "Record deployed",
        "Find why it rolled back",
    }
    assert states["Record rolled back"]["Arguments"]["ModelApprovalStatus"] == "Rejected"


def test_delivery_failures_and_outcomes_reach_the_alert_topic(each_env):
    template = each_env.template_json("serving")
    rules = [r["Properties"] for r in of_type(template, "AWS::Events::Rule").values()]
    (failures,) = [r for r in rules if r["EventPattern"].get("source") == ["aws.states"]]
    assert failures["EventPattern"]["detail"]["status"] == ["FAILED", "TIMED_OUT", "ABORTED"]
    assert f"{each_env.config.resource_prefix}-alerts" in json.dumps(failures["Targets"])
    states = delivery_definition(each_env)["States"]
    for name in ("Notify deployed", "Notify rolled back"):
        assert states[name]["Resource"].endswith(":states:::sns:publish")


def test_models_split_into_stacks_of_the_configured_size(tmp_path):
    names = [f"m{index:02d}" for index in range(31)]
    override = tmp_path / "many.yaml"
    override.write_text(
        "serving:\n  models_per_stack: 12\n  models:\n"
        + "".join(f"    - name: {name}\n" for name in names)
    )
    groups = model_groups(load_config(env="dev", override_file=override))
    assert [len(g) for g in groups] == [12, 12, 7]
    assert [m.name for g in groups for m in g] == names


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "serving:\n  internal: false\n",
            "serving.certificate_arn = None: an internet-facing load balancer needs HTTPS",
        ),
        ("serving:\n  allowed_cidrs: [0.0.0.0/0]\n", "opens the models to every address"),
        (
            "serving:\n  models: [{name: ranker}, {name: ranker}]\n",
            "serving.models = ['ranker', 'ranker']: model names must be distinct",
        ),
        (
            "serving:\n  canary:\n    analysis_minutes: 20\n    step_bake_minutes: 10\n",
            "serving.canary.analysis_minutes = 20: must fit in step_bake_minutes (10)",
        ),
        (
            "serving:\n  canary:\n    pass_threshold: 40\n    marginal_threshold: 50\n",
            "serving.canary.marginal_threshold = 50.0: must be at most pass_threshold (40.0)",
        ),
    ],
)
def test_bad_serving_config_is_refused_with_one_line(tmp_path, override, message):
    from platform_config import ConfigError

    path = tmp_path / "mine.yaml"
    path.write_text(override)
    with pytest.raises(ConfigError) as raised:
        load_config(env="dev", override_file=path)
    assert message in str(raised.value)


def evaluate(expression: str, variables: dict, states: dict | None = None):
    """A `{% ... %}` JSONata expression of the workflow, evaluated as Step Functions would."""
    assert expression.startswith("{%"), expression
    assert expression.endswith("%}"), expression
    compiled = jsonata.Jsonata(expression[2:-2].strip())
    for name, value in {**variables, "states": states or {}}.items():
        compiled.assign(name, value)
    return compiled.evaluate(None)


PACKAGE = {
    "ModelPackageGroupName": "ml-platform-dev-recommender",
    "ModelPackageVersion": 7,
    "ModelPackageArn": (
        "arn:aws:sagemaker:us-east-1:123456789012:model-package/ml-platform-dev-recommender/7"
    ),
    "InferenceSpecification": {
        "Containers": [{"Image": "img", "ModelDataUrl": "s3://artifacts/models/x/model.tar.gz"}]
    },
    "CustomerMetadataProperties": {
        "training_date": "2026-11-30T03:12:00Z",
        "metric_recall_at_k": "0.31",
        "metric_ndcg_at_k": "0.17",
        "approval_reason": "recall_at_k 0.31 beats approved version 6 at 0.29",
    },
}


def test_delivery_expressions_turn_an_approval_into_stack_parameters(dev):
    states = delivery_definition(dev)["States"]
    describe = states["Describe version"]["Assign"]
    target = evaluate(describe["target"], {}, {"result": PACKAGE})
    assert target["stack"] == "ml-platform-dev-serving-models-1"
    update = states["Set served version"]
    values = evaluate(update["Assign"]["values"], {"package": PACKAGE, "target": target})
    assert values == {
        "RecommenderVersion": "7",
        "RecommenderArtifactUri": "s3://artifacts/models/x/model.tar.gz",
        "RecommenderTrainingDate": "2026-11-30T03:12:00Z",
        "RecommenderMetrics": '{"metric_recall_at_k":"0.31","metric_ndcg_at_k":"0.17"}',
        "RecommenderPackageArn": PACKAGE["ModelPackageArn"],
    }
    parameters = evaluate(update["Arguments"]["Parameters"], {"target": target, "values": values})
    by_key = {p["ParameterKey"]: p for p in parameters}
    assert set(by_key) == set(models_template(dev)["Parameters"])
    assert by_key["RecommenderVersion"]["ParameterValue"] == "7"
    assert by_key["RecommenderCandidateVersion"] == {
        "ParameterKey": "RecommenderCandidateVersion",
        "UsePreviousValue": True,
    }
    assert by_key["BootstrapVersion"]["UsePreviousValue"] is True


def test_a_version_without_metrics_or_date_still_gets_valid_parameters(dev):
    states = delivery_definition(dev)["States"]
    bare = {**PACKAGE, "CustomerMetadataProperties": {}}
    target = evaluate(states["Describe version"]["Assign"]["target"], {}, {"result": bare})
    values = evaluate(
        states["Set served version"]["Assign"]["values"], {"package": bare, "target": target}
    )
    assert values["RecommenderMetrics"] == "{}"
    assert values["RecommenderTrainingDate"] == "unknown"


def test_a_rollback_is_recorded_in_characters_the_registry_accepts(dev):
    states = delivery_definition(dev)["States"]
    record = states["Record rolled back"]["Arguments"]
    reason = "ECS deployment ecs-svc/123 rolled back: hook [canary] FAILED, score=40 (critical)"
    metadata = evaluate(
        record["CustomerMetadataProperties"], {"package": PACKAGE, "reason": reason}
    )
    assert metadata["approval_reason"] == PACKAGE["CustomerMetadataProperties"]["approval_reason"]
    assert metadata["metric_recall_at_k"] == "0.31"
    assert re.fullmatch(r"[A-Za-z0-9 _.:/=+\-@]{1,256}", metadata["deployment"])
    assert "rolled back" in metadata["deployment"]
    assert "FAILED" in evaluate(record["ApprovalDescription"], {"reason": reason})
