"""ABlaze's infrastructure: its tables with the stateful resources, its service reachable only
through the internal serving load balancer, and least-privilege wiring to serving."""

from __future__ import annotations

import json

from cdk_constructs.experimentation import (
    LISTENER_PRIORITY,
    SURFACE_INDEX,
    URL_PREFIX,
    experiments_table_name,
    results_table_name,
)
from tests.test_emr import instance_role_statements
from tests.test_orchestrator import role_statements

# Stateful: a changed logical id would replace the table and lose every experiment.
PINNED_TABLE_IDS = {"Experiments5D71F4DC", "ExperimentsResultsCA884CDD"}


def of_type(template: dict, cfn_type: str) -> dict[str, dict]:
    return {
        lid: r["Properties"] for lid, r in template["Resources"].items() if r["Type"] == cfn_type
    }


def task_role_statements(template: dict) -> list[dict]:
    """The statements of the role of the stack's one ECS task: what its application may call."""
    (task,) = of_type(template, "AWS::ECS::TaskDefinition").values()
    return role_statements(template, task["TaskRoleArn"]["Fn::GetAtt"][0])


def test_tables_are_keyed_as_the_service_reads_them_and_encrypted_with_the_data_key(each_env):
    template = each_env.template_json("data")
    resources = template["Resources"]
    tables = of_type(template, "AWS::DynamoDB::GlobalTable")
    assert set(tables) >= PINNED_TABLE_IDS
    prefix = each_env.config.resource_prefix
    experiments = tables["Experiments5D71F4DC"]
    assert experiments["TableName"] == experiments_table_name(prefix)
    assert experiments["KeySchema"] == [{"AttributeName": "experiment_id", "KeyType": "HASH"}]
    (index,) = experiments["GlobalSecondaryIndexes"]
    assert index["IndexName"] == SURFACE_INDEX
    assert index["KeySchema"] == [
        {"AttributeName": "surface", "KeyType": "HASH"},
        {"AttributeName": "state", "KeyType": "RANGE"},
    ]
    results = tables["ExperimentsResultsCA884CDD"]
    assert results["TableName"] == results_table_name(prefix)
    assert [k["AttributeName"] for k in results["KeySchema"]] == ["experiment_id", "computed_at"]
    protect = each_env.config.protect_stateful_resources
    for lid, table in tables.items():
        if lid not in PINNED_TABLE_IDS:
            continue
        (replica,) = table["Replicas"]
        assert replica["SSESpecification"]["KMSMasterKeyId"] == {
            "Fn::GetAtt": ["DataLakeKey6ACD72F9", "Arn"]
        }
        assert replica["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert replica["DeletionProtectionEnabled"] is protect
        assert resources[lid]["DeletionPolicy"] == ("Retain" if protect else "Delete")


def test_the_service_is_routed_under_its_prefix_and_admits_only_the_load_balancer(each_env):
    template = each_env.template_json("serving")
    (rule,) = [
        p
        for p in of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
        if p["Priority"] == LISTENER_PRIORITY
    ]
    (condition,) = rule["Conditions"]
    assert condition["PathPatternConfig"]["Values"] == [URL_PREFIX, f"{URL_PREFIX}/*"]
    (group,) = of_type(template, "AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert group["HealthCheckPath"] == f"{URL_PREFIX}/health"
    ingress = [
        p
        for p in of_type(template, "AWS::EC2::SecurityGroupIngress").values()
        if p.get("FromPort") == 8080
    ]
    assert ingress
    assert all("SourceSecurityGroupId" in p and "CidrIp" not in p for p in ingress)
    (service,) = of_type(template, "AWS::ECS::Service").values()
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }


def test_the_service_runs_read_only_with_its_tables_and_model_group(each_env):
    template = each_env.template_json("serving")
    (task,) = of_type(template, "AWS::ECS::TaskDefinition").values()
    (app,) = task["ContainerDefinitions"]
    assert app["ReadonlyRootFilesystem"] is True
    env = {e["Name"]: e["Value"] for e in app["Environment"]}
    prefix = each_env.config.resource_prefix
    assert env["EXPERIMENTS_TABLE"] == experiments_table_name(prefix)
    assert env["RESULTS_TABLE"] == results_table_name(prefix)
    assert env["MODEL_PACKAGE_GROUP"] == f"{prefix}-recommender"
    assert env["URL_PREFIX"] == URL_PREFIX


def test_the_service_may_change_experiments_but_only_read_results(each_env):
    statements = task_role_statements(each_env.template_json("serving"))
    prefix = each_env.config.resource_prefix
    writes_results = [
        s
        for s in statements
        if results_table_name(prefix) in json.dumps(s["Resource"])
        and any(a in json.dumps(s["Action"]) for a in ("PutItem", "UpdateItem", "DeleteItem"))
    ]
    assert writes_results == []
    writes_experiments = [
        s
        for s in statements
        if experiments_table_name(prefix) in json.dumps(s["Resource"])
        and "dynamodb:PutItem" in s["Action"]
    ]
    assert writes_experiments
    assert any(s["Action"] == "sagemaker:ListModelPackages" for s in statements)


def test_serving_may_only_query_the_running_experiments(each_env):
    template = each_env.template_json("serving-models-1")
    statements = task_role_statements(template)
    dynamodb = [s for s in statements if "dynamodb:" in json.dumps(s["Action"])]
    assert len(dynamodb) == 1
    (query,) = dynamodb
    assert query["Action"] == "dynamodb:Query"
    assert json.dumps(query["Resource"]).endswith(f'-experiments/index/{SURFACE_INDEX}"]]}}')
    (task,) = of_type(template, "AWS::ECS::TaskDefinition").values()
    (app,) = [c for c in task["ContainerDefinitions"] if c["Name"] == "App"]
    env = {e["Name"]: e["Value"] for e in app["Environment"]}
    assert env["EXPERIMENTS_TABLE"] == experiments_table_name(each_env.config.resource_prefix)
    assert env["EXPERIMENT_SURFACE"] == "recommender"


def test_experimentation_has_its_dashboard_and_alarms(each_env):
    prefix = each_env.config.resource_prefix
    names = {
        p.get("AlarmName")
        for p in of_type(each_env.template_json("serving"), "AWS::CloudWatch::Alarm").values()
    }
    assert f"{prefix}-experimentation-ablaze-unhealthy-targets" in names
    assert f"{prefix}-experimentation-ablaze-5xx" in names


def test_the_analysis_runs_daily_and_on_demand_and_may_only_add_results(each_env):
    orchestration = each_env.platform.orchestration
    assert "analyze-experiments" in orchestration.orchestrator.state_machines
    schedules = of_type(each_env.template_json("orchestration"), "AWS::Scheduler::Schedule")
    assert any(
        p["ScheduleExpression"] == f"cron({each_env.config.experimentation.analysis_cron})"
        and "analyzeexperiments" in json.dumps(p["Target"])
        for p in schedules.values()
    )
    args = each_env.platform.processing.experiment_analysis_args
    prefix = each_env.config.resource_prefix
    assert args[args.index("--results-table") + 1] == results_table_name(prefix)
    statements = instance_role_statements(each_env, "Spark")
    on_results = [s for s in statements if results_table_name(prefix) in json.dumps(s["Resource"])]
    assert [s["Action"] for s in on_results] == ["dynamodb:PutItem"]
