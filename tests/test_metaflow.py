"""Metaflow: metadata service (Fargate, PostgreSQL, NLB, migration) and the client side."""

from __future__ import annotations

import json
import re

import pytest

from tools.metaflow_config import OPTIONAL_KEYS, REQUIRED_KEYS


def resources(synth, cfn_type: str) -> dict[str, dict]:
    return synth.template("metaflow").find_resources(cfn_type)


def only(synth, cfn_type: str) -> dict:
    (found,) = resources(synth, cfn_type).values()
    return found


def test_database_is_encrypted_private_tls_only_and_backed_up(each_env):
    database = only(each_env, "AWS::RDS::DBInstance")
    properties = database["Properties"]
    metaflow = each_env.config.metaflow
    assert properties["Engine"] == "postgres"
    assert properties["StorageEncrypted"] is True
    assert "MetaflowMetadataKey" in json.dumps(properties["KmsKeyId"])
    assert properties["PubliclyAccessible"] is False
    assert properties["DBInstanceClass"] == f"db.{metaflow.db_instance_type}"
    assert properties["MultiAZ"] is metaflow.db_multi_az
    assert properties["BackupRetentionPeriod"] == metaflow.db_backup_retention_days
    parameters = only(each_env, "AWS::RDS::DBParameterGroup")["Properties"]["Parameters"]
    assert parameters == {"rds.force_ssl": "1"}
    subnets = only(each_env, "AWS::RDS::DBSubnetGroup")["Properties"]["SubnetIds"]
    assert all("dataSubnet" in json.dumps(subnet) for subnet in subnets)


def test_prod_protects_the_database_and_dev_does_not(dev, prod):
    assert only(prod, "AWS::RDS::DBInstance")["Properties"]["DeletionProtection"] is True
    assert only(prod, "AWS::RDS::DBInstance")["DeletionPolicy"] == "Retain"
    assert only(dev, "AWS::RDS::DBInstance")["Properties"]["DeletionProtection"] is False
    assert only(dev, "AWS::RDS::DBInstance")["DeletionPolicy"] == "Delete"


def test_the_database_secret_lives_as_long_as_the_database(dev, prod):
    for synth, policy in ((prod, "Retain"), (dev, "Delete")):
        (database,) = resources(synth, "AWS::RDS::DBInstance").values()
        # The instance resolves its password from exactly one secret.
        (secret_id,) = set(
            re.findall(
                r'"Ref": "([^"]+)"', json.dumps(database["Properties"]["MasterUserPassword"])
            )
        )
        assert (
            resources(synth, "AWS::SecretsManager::Secret")[secret_id]["DeletionPolicy"] == policy
        )


def test_credentials_reach_the_service_as_ecs_secrets_never_plain_env(each_env):
    (container,) = only(each_env, "AWS::ECS::TaskDefinition")["Properties"]["ContainerDefinitions"]
    assert container["Image"] == each_env.config.metaflow.metadata_service_image
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert set(environment) == {
        "MF_METADATA_DB_HOST",
        "MF_METADATA_DB_PORT",
        "MF_METADATA_DB_NAME",
        "MF_METADATA_DB_SSL_MODE",
    }
    assert environment["MF_METADATA_DB_SSL_MODE"] == "require"
    secrets = {s["Name"]: json.dumps(s["ValueFrom"]) for s in container["Secrets"]}
    assert set(secrets) == {"MF_METADATA_DB_USER", "MF_METADATA_DB_PSWD"}
    assert ":username::" in secrets["MF_METADATA_DB_USER"]
    assert ":password::" in secrets["MF_METADATA_DB_PSWD"]
    assert {p["ContainerPort"] for p in container["PortMappings"]} == {8080, 8082}


def test_service_runs_privately_with_rollback_and_bounded_scaling(each_env):
    service = only(each_env, "AWS::ECS::Service")["Properties"]
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    target = only(each_env, "AWS::ApplicationAutoScaling::ScalableTarget")["Properties"]
    assert target["MinCapacity"] == each_env.config.metaflow.min_tasks
    assert target["MaxCapacity"] == each_env.config.metaflow.max_tasks


def test_internal_load_balancer_with_metadata_and_migration_listeners(each_env):
    balancer = only(each_env, "AWS::ElasticLoadBalancingV2::LoadBalancer")["Properties"]
    assert balancer["Scheme"] == "internal"
    assert balancer["Type"] == "network"
    listeners = resources(each_env, "AWS::ElasticLoadBalancingV2::Listener").values()
    assert sorted(listener["Properties"]["Port"] for listener in listeners) == [80, 8082]
    for group in resources(each_env, "AWS::ElasticLoadBalancingV2::TargetGroup").values():
        assert group["Properties"]["HealthCheckPath"] == "/ping"


def ingress_rules(synth) -> list[dict]:
    return [r["Properties"] for r in resources(synth, "AWS::EC2::SecurityGroupIngress").values()]


def test_each_tier_admits_only_the_tier_in_front_of_it(each_env):
    rules = ingress_rules(each_env)

    def sources_of(group_fragment: str, port: int) -> list[str]:
        return [
            json.dumps(rule.get("SourceSecurityGroupId", rule.get("CidrIp")))
            for rule in rules
            if group_fragment in json.dumps(rule["GroupId"]) and rule["FromPort"] == port
        ]

    database = sources_of("DatabaseSecurityGroup", 5432)
    assert len(database) == 1
    assert "ServiceSecurityGroup" in database[0]
    for port in (8080, 8082):
        (source,) = sources_of("MetaflowMetadataServiceSecurityGroup", port)
        assert "LoadBalancerSecurityGroup" in source
    assert sources_of("LoadBalancerSecurityGroup", 80) == []
    groups = resources(each_env, "AWS::EC2::SecurityGroup")
    (balancer,) = [g for lid, g in groups.items() if "LoadBalancerSecurityGroup" in lid]
    (clients,) = balancer["Properties"]["SecurityGroupIngress"]
    assert (clients["CidrIp"], clients["FromPort"]) == (each_env.config.network.cidr, 80)
    (migration,) = sources_of("LoadBalancerSecurityGroup", 8082)
    assert "MigrationSecurityGroup" in migration


def test_schema_migration_runs_on_every_new_task_definition(each_env):
    migration = only(each_env, "Custom::MetaflowSchemaMigration")
    properties = migration["Properties"]
    assert properties["Image"] == each_env.config.metaflow.metadata_service_image
    assert "MetaflowMetadataTask" in json.dumps(properties["TaskDefinition"])
    assert any("MetaflowMetadataService" in d for d in migration["DependsOn"])
    functions = resources(each_env, "AWS::Lambda::Function")
    (handler,) = [
        f for lid, f in functions.items() if lid.startswith("MetaflowMetadataMigrationFunction")
    ]
    environment = handler["Properties"]["Environment"]["Variables"]
    assert ":8082" in json.dumps(environment["MIGRATION_URL"])
    assert "VpcConfig" in handler["Properties"]


def batch_environment(synth, name: str) -> dict:
    environments = resources(synth, "AWS::Batch::ComputeEnvironment")
    (found,) = [e for lid, e in environments.items() if lid.startswith(f"MetaflowClient{name}")]
    return found["Properties"]["ComputeResources"]


def test_cpu_and_gpu_compute_in_private_subnets_per_config(each_env):
    metaflow = each_env.config.metaflow
    cpu = batch_environment(each_env, "CpuCompute")
    assert cpu["Type"] == ("FARGATE_SPOT" if metaflow.cpu_queue.spot else "FARGATE")
    assert cpu["MaxvCpus"] == metaflow.cpu_queue.max_vcpus
    gpu = batch_environment(each_env, "GpuCompute")
    assert gpu["Type"] == ("SPOT" if metaflow.gpu_queue.spot else "EC2")
    assert gpu["InstanceTypes"] == metaflow.gpu_queue.instance_types
    assert gpu["MinvCpus"] == 0
    assert gpu["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}]
    for compute in (cpu, gpu):
        assert all("computeSubnet" in json.dumps(s) for s in compute["Subnets"])


def test_two_queues_named_for_the_environment(each_env):
    queues = resources(each_env, "AWS::Batch::JobQueue").values()
    names = sorted(q["Properties"]["JobQueueName"] for q in queues)
    prefix = f"ml-platform-{each_env.config.env_name}-metaflow"
    assert names == [f"{prefix}-cpu", f"{prefix}-gpu"]


def test_state_table_matches_what_metaflow_step_functions_expects(each_env):
    table = only(each_env, "AWS::DynamoDB::GlobalTable")["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "pathspec", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert table["SSESpecification"]["SSEType"] == "KMS"
    (replica,) = table["Replicas"]
    assert replica["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def client_config(synth) -> dict:
    name = f"/ml-platform-{synth.config.env_name}/metaflow/config"
    parameters = resources(synth, "AWS::SSM::Parameter").values()
    (parameter,) = [p["Properties"] for p in parameters if p["Properties"]["Name"] == name]
    return parameter["Value"]


def test_client_config_has_exactly_the_keys_the_tool_and_metaflow_read(each_env):
    config = each_env.platform.metaflow.client.client_config
    assert set(REQUIRED_KEYS) <= set(config)
    assert set(config) - set(REQUIRED_KEYS) <= set(OPTIONAL_KEYS)
    assert config["METAFLOW_DEFAULT_DATASTORE"] == "s3"
    assert config["METAFLOW_DEFAULT_METADATA"] == "service"
    # The parameter holds the same document, rendered with CloudFormation references.
    rendered = json.dumps(client_config(each_env))
    for key in config:
        assert key in rendered
    assert "METAFLOW_DATATOOLS_S3ROOT" in rendered
    assert "METAFLOW_DATATOOLS_SYSROOT_S3" not in rendered


def test_service_url_is_never_empty(each_env):
    rendered = json.dumps(client_config(each_env))
    assert '\\"METAFLOW_SERVICE_INTERNAL_URL\\":\\"http://' in rendered
    assert "MetaflowMetadataLoadBalancer" in rendered
    config = each_env.platform.metaflow.client.client_config
    assert config["METAFLOW_SERVICE_URL"]
    assert config["METAFLOW_SERVICE_INTERNAL_URL"]


def test_dev_serves_metaflow_inside_the_vpc_only(dev):
    dev.template("metaflow").resource_count_is("AWS::ApiGateway::RestApi", 0)
    config = dev.platform.metaflow.client.client_config
    assert config["METAFLOW_SERVICE_URL"] == config["METAFLOW_SERVICE_INTERNAL_URL"]


def test_prod_fronts_the_service_with_an_api_key_gateway(prod):
    template = prod.template("metaflow")
    template.resource_count_is("AWS::ApiGateway::RestApi", 1)
    methods = resources(prod, "AWS::ApiGateway::Method").values()
    assert len(methods) == 2
    for method in methods:
        properties = method["Properties"]
        assert properties["ApiKeyRequired"] is True
        integration = properties["Integration"]
        assert integration["ConnectionType"] == "VPC_LINK"
        assert integration["Type"] == "HTTP_PROXY"
    (link,) = resources(prod, "AWS::ApiGateway::VpcLink").values()
    assert "MetaflowMetadataLoadBalancer" in json.dumps(link["Properties"]["TargetArns"])
    (stage,) = resources(prod, "AWS::ApiGateway::Stage").values()
    assert "AccessLogSetting" in stage["Properties"]
    (key,) = resources(prod, "AWS::ApiGateway::ApiKey").values()
    assert "resolve:secretsmanager" in json.dumps(key["Properties"]["Value"])
    # Clients outside use the gateway; Batch tasks stay on the load balancer.
    rendered = json.dumps(client_config(prod))
    assert "MetaflowMetadataApi" in rendered
    parameters = [p["Properties"]["Name"] for p in resources(prod, "AWS::SSM::Parameter").values()]
    assert "/ml-platform-prod/metaflow/auth-key-secret" in parameters


def test_data_scientists_may_read_the_api_key_only_through_secrets_manager(prod):
    policy = only(prod, "AWS::IAM::ManagedPolicy")["Properties"]["PolicyDocument"]
    (decrypt,) = [s for s in policy["Statement"] if s["Action"] == "kms:Decrypt"]
    assert "MetaflowMetadataKey" in json.dumps(decrypt["Resource"])
    assert "kms:ViaService" in json.dumps(decrypt["Condition"])


def policy_statements(synth, prefix: str) -> list[dict]:
    policies = resources(synth, "AWS::IAM::Policy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith(prefix)]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def test_job_role_reaches_only_the_datastore_prefix(each_env):
    statements = policy_statements(each_env, "MetaflowClientJobRoleDefaultPolicy")
    s3_resources = json.dumps([s["Resource"] for s in statements if "s3:" in json.dumps(s)])
    assert "/metaflow/*" in s3_resources
    assert "s3:::mlp-" in s3_resources
    assert "-artifacts-" in s3_resources
    assert "-raw-" not in s3_resources
    assert "-curated-" not in s3_resources


@pytest.mark.parametrize(
    ("prefix", "action", "fragment"),
    [
        (
            "MetaflowClientStepFunctionsRoleDefaultPolicy",
            "batch:SubmitJob",
            "MetaflowClientCpuQueue",
        ),
        ("MetaflowClientEventsRoleDefaultPolicy", "states:StartExecution", "-metaflow*"),
    ],
)
def test_step_functions_and_events_roles_are_scoped(each_env, prefix, action, fragment):
    statements = policy_statements(each_env, prefix)
    (statement,) = [s for s in statements if action in json.dumps(s["Action"])]
    assert fragment in json.dumps(statement["Resource"])


def test_data_scientist_policy_passes_only_the_platform_roles(each_env):
    policy = only(each_env, "AWS::IAM::ManagedPolicy")["Properties"]
    statements = policy["PolicyDocument"]["Statement"]
    (pass_role,) = [s for s in statements if s["Action"] == "iam:PassRole"]
    passed = json.dumps(pass_role["Resource"])
    for role in ("JobRole", "FargateExecutionRole", "StepFunctionsRole", "EventsRole"):
        assert f"MetaflowClient{role}" in passed
    assert len(pass_role["Resource"]) == 4
