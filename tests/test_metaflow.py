"""Metaflow: metadata service (Fargate, PostgreSQL, NLB, migration) and the client side."""

from __future__ import annotations

import json
import re

import pytest
from aws_cdk import App, Stack, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template
from cdk_nag import AwsSolutionsChecks

from cdk_constructs.base import acknowledge, stateful_removal_policy
from cdk_constructs.metaflow_metadata import SERVICE_DATABASE_USER, MetaflowMetadataService
from platform_config import load_config
from tests.conftest import CDK_CONTEXT, REPO_ROOT
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


def master_secret_id(synth) -> str:
    (database,) = resources(synth, "AWS::RDS::DBInstance").values()
    # The instance resolves its password from exactly one secret.
    (secret_id,) = set(
        re.findall(r'"Ref": "([^"]+)"', json.dumps(database["Properties"]["MasterUserPassword"]))
    )
    return secret_id


def service_secret_id(synth) -> str:
    """The secret generated for the service's own database user."""
    (secret_id,) = [
        lid
        for lid, secret in resources(synth, "AWS::SecretsManager::Secret").items()
        if json.loads(
            secret["Properties"]["GenerateSecretString"].get("SecretStringTemplate", "{}")
        )
        == {"username": SERVICE_DATABASE_USER}
    ]
    return secret_id


def test_the_database_secrets_live_as_long_as_the_database(dev, prod):
    for synth, policy in ((prod, "Retain"), (dev, "Delete")):
        secrets = resources(synth, "AWS::SecretsManager::Secret")
        assert secrets[master_secret_id(synth)]["DeletionPolicy"] == policy
        assert secrets[service_secret_id(synth)]["DeletionPolicy"] == policy


def master_attachment_id(synth) -> str:
    """The secret's attachment to the instance, which is what the CDK hands out as its secret."""
    (attachment_id,) = resources(synth, "AWS::SecretsManager::SecretTargetAttachment")
    return attachment_id


def test_the_master_password_rotates_and_the_service_password_is_its_own(each_env):
    (schedule,) = resources(each_env, "AWS::SecretsManager::RotationSchedule").values()
    attachment_id = master_attachment_id(each_env)
    attachment = resources(each_env, "AWS::SecretsManager::SecretTargetAttachment")[attachment_id]
    assert attachment["Properties"]["SecretId"] == {"Ref": master_secret_id(each_env)}
    assert schedule["Properties"]["SecretId"] == {"Ref": attachment_id}
    assert schedule["Properties"]["RotationRules"]["ScheduleExpression"] == "rate(30 days)"
    service = resources(each_env, "AWS::SecretsManager::Secret")[service_secret_id(each_env)]
    assert service_secret_id(each_env) != master_secret_id(each_env)
    assert service["Properties"]["GenerateSecretString"]["GenerateStringKey"] == "password"


def task_definition(synth, prefix: str) -> dict:
    (found,) = [
        t["Properties"]
        for lid, t in resources(synth, "AWS::ECS::TaskDefinition").items()
        if re.fullmatch(rf"{prefix}[0-9A-F]{{8}}", lid)
    ]
    return found


def secret_refs(container: dict) -> dict[str, str]:
    """Each ECS secret of `container` and the logical id of the secret it reads."""
    return {
        s["Name"]: re.search(r'"Ref": "([^"]+)"', json.dumps(s["ValueFrom"])).group(1)
        for s in container["Secrets"]
    }


def test_the_service_logs_in_as_its_own_user_through_ecs_secrets(each_env):
    (container,) = task_definition(each_env, "MetaflowMetadataTask")["ContainerDefinitions"]
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
    # The service's own secret, never the master's.
    assert set(secret_refs(container).values()) == {service_secret_id(each_env)}
    for master in (master_secret_id(each_env), master_attachment_id(each_env)):
        assert master not in json.dumps(container)
    assert {p["ContainerPort"] for p in container["PortMappings"]} == {8080, 8082}


def test_only_the_one_off_user_task_holds_the_master_credentials(each_env):
    master = (master_secret_id(each_env), master_attachment_id(each_env))
    readers = [
        lid
        for lid, resource in each_env.template_json("metaflow")["Resources"].items()
        if any(f'"Ref": "{ref}"' in json.dumps(resource.get("Properties", {})) for ref in master)
        and resource["Type"]
        not in (
            "AWS::RDS::DBInstance",
            "AWS::SecretsManager::SecretTargetAttachment",
            "AWS::SecretsManager::RotationSchedule",
            # Denies deleting the secret while it rotates.
            "AWS::SecretsManager::ResourcePolicy",
        )
    ]
    assert sorted(re.sub(r"[0-9A-F]{8}$", "", lid) for lid in readers) == [
        "MetaflowMetadataDatabaseUserTask",
        "MetaflowMetadataDatabaseUserTaskExecutionRoleDefaultPolicy",
    ]
    (container,) = task_definition(each_env, "MetaflowMetadataDatabaseUserTask")[
        "ContainerDefinitions"
    ]
    assert container["Image"] == each_env.config.metaflow.metadata_service_image
    assert secret_refs(container)["MASTER_PASSWORD"] in master
    assert secret_refs(container)["SERVICE_PASSWORD"] == service_secret_id(each_env)
    python, flag, script = container["Command"]
    assert (python, flag) == ("python3", "-c")
    assert (
        script
        == (REPO_ROOT / "lambda" / "metaflow_migration" / "create_service_user.py").read_text()
    )


def test_the_service_starts_only_after_its_database_user_is_made(each_env):
    ((user_id, user),) = resources(each_env, "Custom::MetaflowDatabaseUser").items()
    properties = user["Properties"]
    assert "MetaflowMetadataDatabaseUserTask" in json.dumps(properties["TaskDefinition"])
    assert "MetaflowMetadataCluster" in json.dumps(properties["Cluster"])
    assert "DatabaseUserTaskSecurityGroup" in json.dumps(properties["SecurityGroups"])
    assert all("computeSubnet" in json.dumps(subnet) for subnet in properties["Subnets"])
    assert properties["ContainerName"] == "db-user"
    (service_id,) = resources(each_env, "AWS::ECS::Service")
    service = resources(each_env, "AWS::ECS::Service")[service_id]
    assert user_id in service["DependsOn"]
    statements = policy_statements(each_env, "MetaflowMetadataDatabaseUserFunctionServiceRole")
    actions = {json.dumps(s["Action"]): json.dumps(s["Resource"]) for s in statements}
    assert set(actions) == {'"ecs:RunTask"', '"ecs:DescribeTasks"', '"iam:PassRole"'}
    assert "MetaflowMetadataDatabaseUserTask" in actions['"ecs:RunTask"']
    assert "MetaflowMetadataCluster" in actions['"ecs:DescribeTasks"']


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
        return sorted(
            json.dumps(rule.get("SourceSecurityGroupId", rule.get("CidrIp")))
            for rule in rules
            if group_fragment in json.dumps(rule["GroupId"]) and rule["FromPort"] == port
        )

    database = sources_of("MetaflowMetadataDatabaseSecurityGroup", 5432)
    assert len(database) == 2
    assert "DatabaseUserTaskSecurityGroup" in database[0]
    assert "MetaflowMetadataServiceSecurityGroup" in database[1]
    for port in (8080, 8082):
        (source,) = sources_of("MetaflowMetadataServiceSecurityGroup", port)
        assert "LoadBalancerSecurityGroup" in source
    # The Batch jobs by their group, not the VPC's range; no client networks are configured.
    (batch,) = sources_of("LoadBalancerSecurityGroup", 80)
    assert "MetaflowClientComputeSecurityGroup" in batch
    groups = resources(each_env, "AWS::EC2::SecurityGroup")
    (balancer,) = [g for lid, g in groups.items() if "LoadBalancerSecurityGroup" in lid]
    assert "SecurityGroupIngress" not in balancer["Properties"]
    (migration,) = sources_of("LoadBalancerSecurityGroup", 8082)
    assert "MigrationSecurityGroup" in migration
    # The rotation function reaches the database on its port, and nothing else reaches it.
    indirect = [r for r in rules if "DatabaseSecurityGroup" in json.dumps(r["GroupId"])]
    assert len(indirect) == 3
    assert "RotationSingleUserSecurityGroup" in json.dumps(indirect)


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
    # Batch jobs reach the service at the internal load balancer's DNS name.
    parts = client_config(each_env)["Fn::Join"][1]
    (balancer_id,) = resources(each_env, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    (url_at,) = [
        i + 1
        for i, part in enumerate(parts)
        if isinstance(part, str) and part.endswith('"METAFLOW_SERVICE_INTERNAL_URL":"http://')
    ]
    assert parts[url_at] == {"Fn::GetAtt": [balancer_id, "DNSName"]}
    config = each_env.platform.metaflow.client.client_config
    assert config["METAFLOW_SERVICE_URL"]
    assert config["METAFLOW_SERVICE_INTERNAL_URL"]


def test_dev_serves_metaflow_inside_the_vpc_only(dev):
    dev.template("metaflow").resource_count_is("AWS::ApiGateway::RestApi", 0)
    dev.template("metaflow").resource_count_is("AWS::EC2::VPCEndpoint", 0)
    config = dev.platform.metaflow.client.client_config
    assert config["METAFLOW_SERVICE_URL"] == config["METAFLOW_SERVICE_INTERNAL_URL"]


def test_prod_fronts_the_service_with_a_private_api_key_gateway(prod):
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
    (balancer_id,) = resources(prod, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    assert link["Properties"]["TargetArns"] == [{"Ref": balancer_id}]
    (stage,) = resources(prod, "AWS::ApiGateway::Stage").values()
    assert "AccessLogSetting" in stage["Properties"]
    (key,) = resources(prod, "AWS::ApiGateway::ApiKey").values()
    assert "resolve:secretsmanager" in json.dumps(key["Properties"]["Value"])
    parameters = [p["Properties"]["Name"] for p in resources(prod, "AWS::SSM::Parameter").values()]
    assert "/ml-platform-prod/metaflow/auth-key-secret" in parameters
    # What a key rotation needs (README): the key CloudFormation manages and its usage plan.
    outputs = prod.template_json("metaflow")["Outputs"]
    (key_id,) = resources(prod, "AWS::ApiGateway::ApiKey")
    (plan_id,) = resources(prod, "AWS::ApiGateway::UsagePlan")
    assert outputs["MetaflowApiKeyId"]["Value"] == {"Ref": key_id}
    assert outputs["MetaflowApiUsagePlanId"]["Value"] == {"Ref": plan_id}


def test_the_private_api_is_invoked_only_through_its_own_vpc_endpoint(prod):
    (endpoint_id,) = resources(prod, "AWS::EC2::VPCEndpoint")
    endpoint = resources(prod, "AWS::EC2::VPCEndpoint")[endpoint_id]["Properties"]
    assert endpoint["ServiceName"] == "com.amazonaws.us-east-1.execute-api"
    assert endpoint["PrivateDnsEnabled"] is False
    assert all("computeSubnet" in json.dumps(subnet) for subnet in endpoint["SubnetIds"])
    api = only(prod, "AWS::ApiGateway::RestApi")["Properties"]
    assert api["EndpointConfiguration"] == {
        "Types": ["PRIVATE"],
        "VpcEndpointIds": [{"Ref": endpoint_id}],
    }
    allow, deny = api["Policy"]["Statement"]
    assert (allow["Effect"], allow["Action"], "Condition" in allow) == (
        "Allow",
        "execute-api:Invoke",
        False,
    )
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"StringNotEquals": {"aws:SourceVpce": {"Ref": endpoint_id}}}
    # HTTPS from the VPC only (no client networks in prod's config).
    groups = resources(prod, "AWS::EC2::SecurityGroup")
    (group,) = [g for lid, g in groups.items() if lid.startswith("MetaflowMetadataApiEndpoint")]
    assert [(r["CidrIp"], r["FromPort"]) for r in group["Properties"]["SecurityGroupIngress"]] == [
        (prod.config.network.cidr, 443)
    ]
    assert resources(prod, "AWS::WAFv2::WebACL") == {}


def test_clients_get_the_endpoint_specific_url_and_batch_the_load_balancer(prod):
    url = json.dumps(prod.template_json("metaflow")["Outputs"]["MetaflowServiceUrl"]["Value"])
    (api_id,) = resources(prod, "AWS::ApiGateway::RestApi")
    (endpoint_id,) = resources(prod, "AWS::EC2::VPCEndpoint")
    # https://{api-id}-{vpce-id}.execute-api.{region}.amazonaws.com/api/: the name API Gateway
    # gives a private API on an endpoint associated with it, resolvable with or without
    # private DNS.
    assert url == json.dumps(
        {
            "Fn::Join": [
                "",
                [
                    "https://",
                    {"Ref": api_id},
                    "-",
                    {"Ref": endpoint_id},
                    ".execute-api.us-east-1.",
                    {"Ref": "AWS::URLSuffix"},
                    "/api/",
                ],
            ]
        }
    )
    # The client config carries the same URL for people, and the load balancer for Batch.
    rendered = json.dumps(client_config(prod))
    assert f'\\"METAFLOW_SERVICE_URL\\":\\"https://", {{"Ref": "{api_id}"}}, "-"' in rendered
    assert '\\"METAFLOW_SERVICE_INTERNAL_URL\\":\\"http://' in rendered


# Any well-formed digest: the config accepts it and both task definitions pull exactly it.
PINNED_IMAGE = f"netflixoss/metaflow_metadata_service:v2.5.0@sha256:{'5e' * 32}"


def bare_metadata_service(tmp_path, *, env: str, override: str) -> Template:
    """The service alone in a bare stack, configured as the shipped `env` with the `override`
    YAML applied (protected as `env` is), with cdk-nag."""
    override_file = tmp_path / "override.yaml"
    override_file.write_text(override)
    config = load_config(env=env, override_file=override_file)
    app = App(context=CDK_CONTEXT, outdir=str(tmp_path / "out"))
    stack = Stack(app, "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2)
    acknowledge(vpc, "AwsSolutions-VPC7", "A bare VPC for this test; the platform's has flow logs.")
    protect = config.protect_stateful_resources
    service = MetaflowMetadataService(
        stack,
        "Metadata",
        config=config.metaflow,
        vpc=vpc,
        vpc_cidr="10.0.0.0/16",
        service_subnets=ec2.SubnetSelection(subnet_group_name="Private"),
        database_subnets=ec2.SubnetSelection(subnet_group_name="Private"),
        auth_key_parameter_name="/bare/metaflow/auth-key-secret",
        protect=protect,
        removal_policy=stateful_removal_policy(protect=protect),
    )
    Validations.of(service).add_plugins(AwsSolutionsChecks(service))
    app.synth()
    return Template.from_stack(stack)


def public_metadata_service(tmp_path) -> Template:
    return bare_metadata_service(
        tmp_path,
        env="dev",
        override=(
            "metaflow:\n  api_gateway: public\n  api_allowed_cidrs: [203.0.113.0/24]\n"
            "  api_rate_limit_per_5min: 1200\n  client_cidrs: [192.168.0.0/16]\n"
            f"  metadata_service_image: {PINNED_IMAGE}\n"
        ),
    )


def test_a_protected_service_without_a_gateway_is_reached_only_through_its_load_balancer(
    tmp_path,
):
    template = bare_metadata_service(
        tmp_path, env="prod", override="metaflow:\n  api_gateway: disabled\n"
    )
    for gateway_part in (
        "AWS::ApiGateway::RestApi",
        "AWS::ApiGateway::ApiKey",
        "AWS::ApiGateway::VpcLink",
        "AWS::EC2::VPCEndpoint",
        "AWS::WAFv2::WebACL",
        "AWS::SSM::Parameter",
    ):
        template.resource_count_is(gateway_part, 0)
    # The database's master and service credentials only: no API key to hand out.
    secrets = template.find_resources("AWS::SecretsManager::Secret")
    assert len(secrets) == 2
    assert "METAFLOW_SERVICE_AUTH_KEY" not in json.dumps(secrets)
    (balancer,) = template.find_resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    properties = balancer["Properties"]
    assert properties["Scheme"] == "internal"
    # Without a VPC link, every connection, PrivateLink's included, passes the security group.
    assert properties["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"] == "on"
    (database,) = template.find_resources("AWS::RDS::DBInstance").values()
    assert database["Properties"]["DeletionProtection"] is True
    assert database["DeletionPolicy"] == "Retain"


def test_the_public_api_admits_only_the_allowed_networks_behind_a_web_acl(tmp_path):
    template = public_metadata_service(tmp_path).to_json()["Resources"]

    def of_type(cfn_type: str) -> dict[str, dict]:
        return {lid: r for lid, r in template.items() if r["Type"] == cfn_type}

    ((api_id, api),) = of_type("AWS::ApiGateway::RestApi").items()
    assert api["Properties"]["EndpointConfiguration"] == {"Types": ["REGIONAL"]}
    _, deny = api["Properties"]["Policy"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"NotIpAddress": {"aws:SourceIp": ["203.0.113.0/24"]}}
    assert of_type("AWS::EC2::VPCEndpoint") == {}
    ((acl_id, acl),) = of_type("AWS::WAFv2::WebACL").items()
    rules = {rule["Name"]: rule for rule in acl["Properties"]["Rules"]}
    assert rules["RateLimitPerSource"]["Statement"]["RateBasedStatement"] == {
        "AggregateKeyType": "IP",
        "EvaluationWindowSec": 300,
        "Limit": 1200,
    }
    assert rules["RateLimitPerSource"]["Action"] == {"Block": {}}
    common = rules["AWSManagedRulesCommonRuleSet"]["Statement"]["ManagedRuleGroupStatement"]
    assert common["VendorName"] == "AWS"
    assert [o["Name"] for o in common["RuleActionOverrides"]] == ["SizeRestrictions_BODY"]
    assert "AWSManagedRulesKnownBadInputsRuleSet" in rules
    images = {
        container["Image"]
        for definition in of_type("AWS::ECS::TaskDefinition").values()
        for container in definition["Properties"]["ContainerDefinitions"]
    }
    assert images == {PINNED_IMAGE}
    (association,) = of_type("AWS::WAFv2::WebACLAssociation").values()
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": [acl_id, "Arn"]}
    assert {"Ref": api_id} in association["Properties"]["ResourceArn"]["Fn::Join"][1]
    # The configured client networks reach the load balancer's metadata port.
    (balancer,) = [
        r for lid, r in of_type("AWS::EC2::SecurityGroup").items() if "LoadBalancer" in lid
    ]
    assert balancer["Properties"]["SecurityGroupIngress"] == [
        {
            "CidrIp": "192.168.0.0/16",
            "Description": "metaflow.client_cidrs",
            "FromPort": 80,
            "IpProtocol": "tcp",
            "ToPort": 80,
        }
    ]


def test_data_scientists_may_read_the_api_key_only_through_secrets_manager(prod):
    policy = only(prod, "AWS::IAM::ManagedPolicy")["Properties"]["PolicyDocument"]
    (decrypt,) = [s for s in policy["Statement"] if s["Action"] == "kms:Decrypt"]
    assert "MetaflowMetadataKey" in json.dumps(decrypt["Resource"])
    assert "kms:ViaService" in json.dumps(decrypt["Condition"])


def policy_statements(synth, prefix: str) -> list[dict]:
    policies = resources(synth, "AWS::IAM::Policy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith(prefix)]
    return policy["Properties"]["PolicyDocument"]["Statement"]


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


def client_policies(synth) -> dict[str, list[dict]]:
    """The statements of every Metaflow client role's policy and the data-scientist policy."""
    found = {
        lid: p["Properties"]["PolicyDocument"]["Statement"]
        for lid, p in resources(synth, "AWS::IAM::Policy").items()
        if lid.startswith(("MetaflowClientJobRole", "MetaflowClientStepFunctionsRole"))
    }
    found["DataScientistPolicy"] = only(synth, "AWS::IAM::ManagedPolicy")["Properties"][
        "PolicyDocument"
    ]["Statement"]
    return found


def actions_of(statement: dict) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else action


def statement_with(statements: list[dict], action: str) -> dict:
    (found,) = [s for s in statements if action in actions_of(s)]
    return found


def test_job_role_reaches_only_the_datastore_prefix_and_the_state_table(each_env):
    statements = policy_statements(each_env, "MetaflowClientJobRoleDefaultPolicy")
    s3_resources = json.dumps([s["Resource"] for s in statements if "s3:" in json.dumps(s)])
    assert "/metaflow/*" in s3_resources
    assert "s3:::mlp-" in s3_resources
    assert "-artifacts-" in s3_resources
    assert "-raw-" not in s3_resources
    assert "-curated-" not in s3_resources
    # A foreach on Step Functions records its splits from inside the Batch task.
    table = statement_with(statements, "dynamodb:PutItem")
    assert sorted(actions_of(table)) == [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    ]
    assert "MetaflowClientStepFunctionsState" in json.dumps(table["Resource"])


def test_batch_grants_name_metaflow_job_definitions_and_job_arns(each_env):
    policies = client_policies(each_env)
    for name in ("StepFunctionsRole", "DataScientistPolicy"):
        (statements,) = [s for lid, s in policies.items() if name in lid]
        submit = json.dumps(statement_with(statements, "batch:SubmitJob")["Resource"])
        assert ":job-definition/metaflow_*" in submit
        assert "MetaflowClientCpuQueue" in submit
        assert "MetaflowClientGpuQueue" in submit
        terminate = statement_with(statements, "batch:TerminateJob")
        assert json.dumps(terminate["Resource"]).endswith(':job/*"]]}')
    register = statement_with(policies["DataScientistPolicy"], "batch:RegisterJobDefinition")
    assert ":job-definition/metaflow_*" in json.dumps(register["Resource"])
    assert register["Condition"] == {"BoolIfExists": {"batch:Privileged": "false"}}


def test_nothing_but_reads_is_granted_on_every_resource(each_env):
    for name, statements in client_policies(each_env).items():
        for statement in statements:
            if statement["Resource"] == "*":
                for action in actions_of(statement):
                    assert action.split(":")[1].startswith(("Describe", "List")), (name, action)


def test_schedules_may_only_target_the_platforms_state_machines(each_env):
    statements = client_policies(each_env)["DataScientistPolicy"]
    put_targets = statement_with(statements, "events:PutTargets")
    assert actions_of(put_targets) == ["events:PutTargets"]
    (targets,) = put_targets["Condition"]["ForAllValues:ArnLike"]["events:TargetArn"]
    prefix = f"ml-platform-{each_env.config.env_name}-metaflow"
    assert json.dumps(targets).endswith(f':stateMachine:{prefix}*"]]}}')
    assert put_targets["Condition"]["Null"] == {"events:TargetArn": "false"}
    assert json.dumps(put_targets["Resource"]).endswith(f':rule/{prefix}*"]]}}')
    # `step-functions create` disables the rule of a flow that has no @schedule.
    assert "events:DisableRule" in actions_of(statement_with(statements, "events:PutRule"))


def test_the_data_key_is_used_only_through_s3_and_dynamodb(each_env):
    expected = {
        "MetaflowClientJobRole": ["s3", "dynamodb"],
        "MetaflowClientStepFunctionsRole": ["dynamodb"],
        "DataScientistPolicy": ["s3"],
    }
    for name, statements in client_policies(each_env).items():
        data_key = [
            s
            for s in statements
            if any(a.startswith("kms:") for a in actions_of(s))
            and "DataLakeKey" in json.dumps(s["Resource"])
        ]
        (statement,) = data_key
        services = [
            f"{service}.{each_env.config.region}.amazonaws.com"
            for prefix, names in expected.items()
            if name.startswith(prefix)
            for service in names
        ]
        assert statement["Condition"] == {"StringEquals": {"kms:ViaService": services}}, name


def test_no_metaflow_principal_deletes_objects_or_versions(each_env):
    for name, statements in client_policies(each_env).items():
        for statement in statements:
            assert not any(a.startswith("s3:Delete") for a in actions_of(statement)), name
    assert "dynamodb" not in json.dumps(client_policies(each_env)["DataScientistPolicy"])
