"""Flink and Spark clusters: hardened EMR, fleets, and the least privilege of each arrow."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from tests.test_orchestrator import function_role_statements, role_statements


def cluster(synth, name: str) -> dict:
    """The properties of the EMR cluster `name` (Flink or Spark) of the environment."""
    clusters = synth.template("processing").find_resources("AWS::EMR::Cluster")
    cluster_name = f"{synth.config.resource_prefix}-{name.lower()}"
    (found,) = [c for c in clusters.values() if c["Properties"]["Name"] == cluster_name]
    return found["Properties"]


def instance_role_statements(synth, name: str) -> list[dict]:
    """The statements of the role the instances (and so the jobs) of cluster `name` run with."""
    resources = synth.template_json("processing")["Resources"]
    profile = resources[cluster(synth, name)["JobFlowRole"]["Ref"]]
    (role,) = profile["Properties"]["Roles"]
    return role_statements(synth.template_json("processing"), role["Ref"])


def actions_on(statements: list[dict], fragment: str) -> set[str]:
    found = set()
    for statement in statements:
        resources = statement["Resource"]
        resources = resources if isinstance(resources, list) else [resources]
        if any(fragment in json.dumps(resource) for resource in resources):
            actions = statement["Action"]
            found |= set(actions if isinstance(actions, list) else [actions])
    return found


@pytest.mark.parametrize("name", ["Flink", "Spark"])
def test_security_configuration_encrypts_at_rest_and_in_transit(each_env, name):
    configs = each_env.template("processing").find_resources("AWS::EMR::SecurityConfiguration")
    (config,) = [c for lid, c in configs.items() if lid.startswith(name)]
    document = config["Properties"]["SecurityConfiguration"]
    encryption = document["EncryptionConfiguration"]
    assert encryption["EnableAtRestEncryption"] is True
    assert encryption["EnableInTransitEncryption"] is True
    at_rest = encryption["AtRestEncryptionConfiguration"]
    assert at_rest["S3EncryptionConfiguration"]["EncryptionMode"] == "SSE-KMS"
    assert at_rest["LocalDiskEncryptionConfiguration"]["EnableEbsEncryption"] is True
    assert "DataLakeKey" in json.dumps(at_rest)
    assert (
        document["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"]
        == 2
    )
    assert cluster(each_env, name)["SecurityConfiguration"] == config["Properties"]["Name"]


@pytest.mark.parametrize("name", ["Flink", "Spark"])
def test_private_subnets_no_key_pair_and_logs_to_the_logs_bucket(each_env, name):
    properties = cluster(each_env, name)
    instances = properties["Instances"]
    assert "Ec2KeyName" not in instances
    assert all("computeSubnet" in json.dumps(s) for s in instances["Ec2SubnetIds"])
    assert "ServiceAccessSecurityGroup" in instances
    assert properties["ReleaseLabel"] == getattr(each_env.config, name.lower()).release_label
    assert f"mlp-{each_env.config.env_name}-logs-" in json.dumps(properties["LogUri"])


def test_spark_uses_glue_as_the_hive_metastore(each_env):
    classifications = {
        c["Classification"]: c.get("ConfigurationProperties", {})
        for c in cluster(each_env, "Spark")["Configurations"]
    }
    factory = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
    for name in ("spark-hive-site", "hive-site"):
        assert classifications[name]["hive.metastore.client.factory.class"] == factory
    assert {a["Name"] for a in cluster(each_env, "Spark")["Applications"]} >= {"Spark", "Hive"}


def test_jobs_run_on_python_3_11(each_env):
    configurations = cluster(each_env, "Spark")["Configurations"]
    (spark_env,) = [c for c in configurations if c["Classification"] == "spark-env"]
    exports = spark_env["Configurations"][0]["ConfigurationProperties"]
    assert exports["PYSPARK_PYTHON"] == "/usr/bin/python3.11"
    (flink_conf,) = cluster(each_env, "Flink")["Configurations"]
    assert flink_conf["ConfigurationProperties"]["python.executable"] == "/usr/bin/python3.11"


def test_spark_task_fleet_runs_on_spot_with_on_demand_fallback(each_env):
    fleets = each_env.template("processing").find_resources("AWS::EMR::InstanceFleetConfig")
    (task,) = fleets.values()
    properties = task["Properties"]
    assert properties["InstanceFleetType"] == "TASK"
    spot = properties["LaunchSpecifications"]["SpotSpecification"]
    assert spot["TimeoutAction"] == "SWITCH_TO_ON_DEMAND"
    types = {c["InstanceType"] for c in properties["InstanceTypeConfigs"]}
    assert types == set(each_env.config.spark.task_instance_types)


def test_managed_scaling_limits_come_from_config(each_env):
    limits = cluster(each_env, "Spark")["ManagedScalingPolicy"]["ComputeLimits"]
    spark = each_env.config.spark
    assert limits["MaximumCapacityUnits"] == spark.max_capacity_units
    assert limits["MinimumCapacityUnits"] == spark.core_instance_count
    assert limits["MaximumOnDemandCapacityUnits"] == spark.core_instance_count


def test_dev_spark_terminates_when_idle_and_prod_stays_up(dev, prod):
    assert cluster(dev, "Spark")["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert "AutoTerminationPolicy" not in cluster(prod, "Spark")
    assert "AutoTerminationPolicy" not in cluster(dev, "Flink")


def test_flink_reads_only_its_topic_and_group(each_env):
    statements = instance_role_statements(each_env, "Flink")
    kafka = [s for s in statements if str(s["Action"]).count("kafka-cluster") > 0]
    (statement,) = kafka
    assert set(statement["Action"]) == {
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeCluster",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:ReadData",
        "kafka-cluster:DescribeGroup",
        "kafka-cluster:AlterGroup",
    }
    text = json.dumps(statement["Resource"])
    assert f"topic/ml-platform-{each_env.config.env_name}-events/*/member-interactions" in text
    assert f"group/ml-platform-{each_env.config.env_name}-events/*/" in text
    assert "WriteData" not in json.dumps(statements)


def test_flink_writes_only_the_streaming_prefix_of_raw(each_env):
    statements = instance_role_statements(each_env, "Flink")
    env = each_env.config.env_name
    raw_statements = [s for s in statements if f"mlp-{env}-raw-" in json.dumps(s["Resource"])]
    for statement in raw_statements:
        assert json.dumps(statement["Resource"]).count("/streaming/*") >= 1
    assert "s3:PutObject" in actions_on(raw_statements, "/streaming/*")
    assert not any("s3:GetObject" in json.dumps(s["Action"]) for s in raw_statements)
    assert actions_on(statements, f"mlp-{env}-curated-") == set()


def test_spark_reads_raw_writes_curated_and_maintains_catalog_tables(each_env):
    statements = instance_role_statements(each_env, "Spark")
    env = each_env.config.env_name
    raw = actions_on(statements, f"mlp-{env}-raw-")
    assert "s3:GetObject*" in raw
    assert not any(a.startswith(("s3:Put", "s3:Delete")) for a in raw)
    assert {"s3:PutObject", "s3:DeleteObject*"} <= actions_on(statements, f"mlp-{env}-curated-")
    glue = actions_on(statements, ":glue:")
    assert {"glue:CreateTable", "glue:UpdateTable", "glue:BatchCreatePartition"} <= glue
    assert not any("Delete" in action for action in glue)
    glue_text = json.dumps([s["Resource"] for s in statements if "glue:CreateTable" in s["Action"]])
    assert f"ml_platform_{env}_curated" in glue_text
    assert f"ml_platform_{env}_features" in glue_text
    assert f"ml_platform_{env}_raw" not in glue_text
    assert "kafka-cluster" not in json.dumps(statements)


@pytest.mark.parametrize("name", ["Flink", "Spark"])
def test_job_code_ships_to_the_artifacts_bucket(each_env, name):
    deployments = each_env.template("processing").find_resources("Custom::CDKBucketDeployment")
    prefixes = sorted(
        d["Properties"]["DestinationBucketKeyPrefix"]
        for lid, d in deployments.items()
        if lid.startswith(name)
    )
    container = name.lower()
    assert prefixes == [f"code/{container}/jobs/", f"code/{container}/schemas/"]
    bootstrap = cluster(each_env, name)["BootstrapActions"][0]["ScriptBootstrapAction"]["Path"]
    assert f"/code/{container}/jobs/emr/install_job_code.sh" in json.dumps(bootstrap)


def test_emr_resources_carry_the_managed_policy_tag_and_the_keeper_does_not(each_env):
    resources = each_env.template_json("processing")["Resources"]
    for logical_id, resource in resources.items():
        if resource["Type"] not in ("AWS::EMR::Cluster", "AWS::EC2::SecurityGroup"):
            continue
        tags = {t["Key"]: t["Value"] for t in resource["Properties"]["Tags"]}
        # EMR's v2 service policy may change what carries the tag, the keeper's group too.
        expected = None if "keeper" in logical_id else "true"
        assert tags.get("for-use-with-amazon-emr-managed-policies") == expected, logical_id


# --- EBS volumes -----------------------------------------------------------------------------


def ebs(volume_gib: int) -> dict:
    return {
        "EbsBlockDeviceConfigs": [
            {
                "VolumeSpecification": {"SizeInGB": volume_gib, "VolumeType": "gp3"},
                "VolumesPerInstance": 1,
            }
        ]
    }


def fleet_volumes(template: dict) -> dict[tuple[str, str], list[dict]]:
    """(cluster logical id prefix, fleet) -> EbsConfiguration of each of its instance types."""
    found = {}
    for logical_id, resource in template["Resources"].items():
        owner = logical_id.split("Cluster")[0].split("TaskFleet")[0]
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::EMR::Cluster":
            for fleet in ("MasterInstanceFleet", "CoreInstanceFleet"):
                configs = properties["Instances"][fleet]["InstanceTypeConfigs"]
                found[(owner, fleet)] = [c["EbsConfiguration"] for c in configs]
        elif resource["Type"] == "AWS::EMR::InstanceFleetConfig":
            configs = properties["InstanceTypeConfigs"]
            found[(owner, properties["InstanceFleetType"])] = [
                c["EbsConfiguration"] for c in configs
            ]
    return found


def test_every_fleet_of_both_clusters_gets_its_ebs_volumes(each_env):
    volumes = fleet_volumes(each_env.template_json("processing"))

    expected = {}
    for name in ("Flink", "Spark"):
        config = getattr(each_env.config, name.lower())
        expected[(name, "MasterInstanceFleet")] = [ebs(config.ebs_volume_gib)]
        expected[(name, "CoreInstanceFleet")] = [ebs(config.ebs_volume_gib)]
        if config.task_instance_types:
            expected[(name, "TASK")] = [ebs(config.ebs_volume_gib)] * len(
                config.task_instance_types
            )
    assert volumes == expected
    assert ("Spark", "TASK") in volumes


def empty_objects(value, path: str = "") -> list[str]:
    if isinstance(value, dict):
        if not value:
            return [path]
        return [p for key, item in value.items() for p in empty_objects(item, f"{path}/{key}")]
    if isinstance(value, list):
        return [
            p for index, item in enumerate(value) for p in empty_objects(item, f"{path}/{index}")
        ]
    return []


def test_no_property_of_the_processing_stack_renders_empty(each_env):
    # What jsii does with a dict given for an L1 struct: it drops the keys and renders {}.
    resources = each_env.template_json("processing")["Resources"]
    assert [
        f"{logical_id}{path}"
        for logical_id, resource in resources.items()
        for path in empty_objects(resource.get("Properties", {}))
    ] == []


# --- TLS certificates ------------------------------------------------------------------------


def resource_of(template: dict, cfn_type: str, prefix: str = "") -> tuple[str, dict]:
    (found,) = [
        (logical_id, resource)
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == cfn_type and logical_id.startswith(prefix)
    ]
    return found


def test_internal_domain_is_the_regions_private_dns_wildcard():
    from cdk_constructs.emr import internal_domain

    assert internal_domain("us-east-1") == "*.ec2.internal"
    assert internal_domain("eu-west-1") == "*.eu-west-1.compute.internal"


def test_the_deploy_writes_the_certificates_before_either_cluster(each_env):
    template = each_env.template_json("processing")
    certificates_id, certificates = resource_of(template, "Custom::EmrTlsCertificates")
    properties = certificates["Properties"]
    env = each_env.config.env_name
    assert properties["Key"] == "emr/tls/certificates.zip"
    assert f"mlp-{env}-artifacts-" in json.dumps(properties["Bucket"])
    assert "DataLakeKey" in json.dumps(properties["KmsKeyArn"])
    assert properties["DnsName"] == "*.ec2.internal"  # both shipped configs are us-east-1
    assert properties["ValidityDays"] == each_env.config.emr_tls.validity_days
    assert properties["ServiceTimeout"] == "300"
    writer_id, _ = resource_of(template, "AWS::Lambda::Function", "EmrTlsWriter")
    assert properties["ServiceToken"] == {"Fn::GetAtt": [writer_id, "Arn"]}

    for name in ("Flink", "Spark"):
        _, cluster_resource = resource_of(template, "AWS::EMR::Cluster", name)
        assert certificates_id in cluster_resource["DependsOn"]
        _, configuration = resource_of(template, "AWS::EMR::SecurityConfiguration", name)
        # The certificate's id in the name: a new certificate makes new clusters.
        assert configuration["Properties"]["Name"] == {
            "Fn::Join": [
                "",
                [
                    f"ml-platform-{env}-{name.lower()}-security-",
                    {"Fn::GetAtt": [certificates_id, "CertificateId"]},
                ],
            ]
        }
        tls = configuration["Properties"]["SecurityConfiguration"]["EncryptionConfiguration"][
            "InTransitEncryptionConfiguration"
        ]["TLSCertificateConfiguration"]
        assert tls["CertificateProviderType"] == "PEM"
        assert json.dumps(tls["S3Object"]).endswith('/emr/tls/certificates.zip"]]}')


def test_the_certificate_writer_may_only_make_rsa_pairs_and_put_the_one_object(each_env):
    template = each_env.template_json("processing")
    statements = function_role_statements(
        template, "Writes the self-signed certificates of EMR in-transit encryption"
    )
    key = statements[0]["Resource"]
    assert "DataLakeKey" in json.dumps(key)
    assert statements[:2] == [
        {
            "Action": "kms:GenerateDataKeyPair",
            "Condition": {"StringEquals": {"kms:DataKeyPairSpec": "RSA_2048"}},
            "Effect": "Allow",
            "Resource": key,
        },
        {"Action": "kms:GenerateDataKey", "Effect": "Allow", "Resource": key},
    ]
    (put,) = statements[2:]
    assert put["Action"] == "s3:PutObject"
    assert json.dumps(put["Resource"]).endswith('/emr/tls/certificates.zip"]]}')
    assert "Delete" not in json.dumps(statements)


# --- The streaming job and its keeper --------------------------------------------------------


def render(value, literals: dict[str, str]) -> str:
    """A template value with each CloudFormation token replaced by a literal of its kind."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(render(part, literals) for part in parts)
    return next(literal for key, literal in literals.items() if key in json.dumps(value))


LITERALS = {
    "Fn::GetStackOutput": "b-1.example:9098,b-2.example:9098",  # the brokers
    "AWS::AccountId": "123456789012",
    "AWS::Region": "us-east-1",
}


def flink_step(synth) -> dict:
    (step,) = cluster(synth, "Flink")["Steps"]
    return step


def test_the_streaming_job_starts_with_the_flink_cluster(each_env):
    from jobs.streaming.flink_job import parse_args

    step = flink_step(each_env)
    assert step["Name"] == "raw-ingest"
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    args = [render(arg, LITERALS) for arg in step["HadoopJarStep"]["Args"]]
    assert args[:11] == [
        "flink", "run", "-m", "yarn-cluster", "-d", "-ynm", "raw-ingest",
        "-pyfs", "/home/hadoop/ml-platform/jobs.zip", "-pym", "jobs.streaming.flink_job",
    ]  # fmt: skip
    parsed = parse_args(args[11:])
    env = each_env.config.env_name
    assert parsed.bootstrap_servers == "b-1.example:9098,b-2.example:9098"
    assert parsed.raw_bucket == f"mlp-{env}-raw-123456789012-us-east-1"
    assert parsed.schema_path == (
        "/home/hadoop/ml-platform/schemas/avro/member_interaction_event.avsc"
    )
    assert parsed.checkpoint_dir == (
        f"s3://mlp-{env}-artifacts-123456789012-us-east-1/flink/checkpoints/ml-platform-{env}-flink"
    )
    assert "Steps" not in cluster(each_env, "Spark")


def test_flink_is_termination_protected_where_stateful_resources_are(each_env):
    protected = each_env.config.protect_stateful_resources
    assert protected is (each_env.config.env_name == "prod")
    assert cluster(each_env, "Flink")["Instances"]["TerminationProtected"] is protected
    assert cluster(each_env, "Spark")["Instances"]["TerminationProtected"] is False


def keeper_resource(synth, cfn_type: str, suffix: str = "") -> tuple[str, dict]:
    return resource_of(synth.template_json("processing"), cfn_type, f"Flinkrawingestkeeper{suffix}")


def test_the_keeper_runs_every_five_minutes_with_retries_and_a_dead_letter_queue(each_env):
    function_id, _ = keeper_resource(each_env, "AWS::Lambda::Function")
    queue_id, queue = keeper_resource(each_env, "AWS::SQS::Queue")
    _, schedule = keeper_resource(each_env, "AWS::Scheduler::Schedule")
    properties = schedule["Properties"]
    assert properties["ScheduleExpression"] == "rate(5 minutes)"
    assert properties["State"] == "ENABLED"
    target = properties["Target"]
    assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}}
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 300, "MaximumRetryAttempts": 2}
    assert f"alias/ml-platform-{each_env.config.env_name}/alerts" in json.dumps(
        queue["Properties"]["KmsMasterKeyId"]
    )
    # The schedule's role may encrypt to the queue with the alert key, matched by alias.
    _, role_policy = keeper_resource(each_env, "AWS::IAM::Policy", "ScheduleRole")
    statements = role_policy["Properties"]["PolicyDocument"]["Statement"]
    assert {
        "ForAnyValue:StringEquals": {
            "kms:ResourceAliases": f"alias/ml-platform-{each_env.config.env_name}/alerts"
        }
    } in [s.get("Condition") for s in statements]


def test_the_keeper_resubmits_exactly_the_clusters_step(each_env):
    _, function = keeper_resource(each_env, "AWS::Lambda::Function")
    properties = function["Properties"]
    variables = properties["Environment"]["Variables"]
    step = flink_step(each_env)
    assert json.loads(render(variables["STEP_ARGS"], LITERALS)) == [
        render(arg, LITERALS) for arg in step["HadoopJarStep"]["Args"]
    ]
    assert variables["JOB_NAME"] == step["Name"]
    assert variables["CLUSTER_NAME"] == f"ml-platform-{each_env.config.env_name}-flink"
    assert variables["CLUSTER_ID"] == {
        "Ref": resource_of(each_env.template_json("processing"), "AWS::EMR::Cluster", "Flink")[0]
    }
    assert variables["RESOURCE_MANAGER_PORT"] == "8088"
    assert variables["METRIC_NAMESPACE"] == "MLPlatform/Streaming"
    assert properties["ReservedConcurrentExecutions"] == 1  # one run at a time
    assert properties["DeadLetterConfig"]["TargetArn"] == {
        "Fn::GetAtt": [keeper_resource(each_env, "AWS::SQS::Queue")[0], "Arn"]
    }


def test_the_keeper_may_act_on_its_cluster_and_publish_its_metric_only(each_env):
    template = each_env.template_json("processing")
    statements = function_role_statements(
        template, f"Keeps raw-ingest running on {each_env.config.resource_prefix}-flink"
    )
    flink_id, _ = resource_of(template, "AWS::EMR::Cluster", "Flink")
    (emr_statement,) = [s for s in statements if "elasticmapreduce" in json.dumps(s["Action"])]
    assert sorted(emr_statement["Action"]) == [
        "elasticmapreduce:AddJobFlowSteps",
        "elasticmapreduce:DescribeCluster",
        "elasticmapreduce:ListSteps",
    ]
    assert emr_statement["Resource"]["Fn::Join"][1][-2:] == [":cluster/", {"Ref": flink_id}]
    (metrics,) = [s for s in statements if s["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {
        "StringEquals": {"cloudwatch:namespace": "MLPlatform/Streaming"}
    }


def test_only_the_keeper_reaches_the_resource_manager(each_env):
    template = each_env.template_json("processing")
    group_id, group = keeper_resource(each_env, "AWS::EC2::SecurityGroup")
    primary_id, _ = resource_of(template, "AWS::EC2::SecurityGroup", "FlinkPrimarySecurityGroup")
    _, function = keeper_resource(each_env, "AWS::Lambda::Function")
    vpc_config = function["Properties"]["VpcConfig"]
    assert vpc_config["SecurityGroupIds"] == [{"Fn::GetAtt": [group_id, "GroupId"]}]
    assert all("computeSubnet" in json.dumps(s) for s in vpc_config["SubnetIds"])
    assert group["Properties"]["SecurityGroupEgress"] == [
        {
            "CidrIp": "0.0.0.0/0",
            "Description": "EMR and CloudWatch APIs",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]
    rules = {
        resource["Type"]: resource["Properties"]
        for resource in template["Resources"].values()
        if resource["Type"] in ("AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress")
        and resource["Properties"].get("FromPort") == 8088
    }
    assert rules["AWS::EC2::SecurityGroupIngress"]["GroupId"] == {
        "Fn::GetAtt": [primary_id, "GroupId"]
    }
    assert rules["AWS::EC2::SecurityGroupIngress"]["SourceSecurityGroupId"] == {
        "Fn::GetAtt": [group_id, "GroupId"]
    }
    assert rules["AWS::EC2::SecurityGroupEgress"]["GroupId"] == {
        "Fn::GetAtt": [group_id, "GroupId"]
    }
    assert rules["AWS::EC2::SecurityGroupEgress"]["DestinationSecurityGroupId"] == {
        "Fn::GetAtt": [primary_id, "GroupId"]
    }
    assert (
        len(
            [
                r
                for r in template["Resources"].values()
                if r["Type"] == "AWS::EC2::SecurityGroupIngress"
                and r["Properties"].get("FromPort") == 8088
            ]
        )
        == 1
    )


def test_the_alarm_tells_the_alert_topic_when_the_job_stays_down(each_env):
    env = each_env.config.env_name
    (properties,) = [
        r["Properties"]
        for r in each_env.template_json("processing")["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("AlarmName")
        == f"ml-platform-{env}-streaming-raw-ingest-not-running"
    ]
    assert (properties["Namespace"], properties["MetricName"]) == (
        "MLPlatform/Streaming",
        "FlinkJobRunning",
    )
    assert properties["Dimensions"] == [
        {"Name": "ClusterName", "Value": f"ml-platform-{env}-flink"},
        {"Name": "JobName", "Value": "raw-ingest"},
    ]
    assert properties["Statistic"] == "Maximum"
    assert (properties["ComparisonOperator"], properties["Threshold"]) == ("LessThanThreshold", 1)
    assert (
        properties["EvaluationPeriods"],
        properties["DatapointsToAlarm"],
        properties["Period"],
    ) == (3, 2, 300)
    assert properties["TreatMissingData"] == "breaching"
    topic = f':sns:us-east-1:", {{"Ref": "AWS::AccountId"}}, ":ml-platform-{env}-alerts"'
    for actions in ("AlarmActions", "OKActions"):
        assert topic in json.dumps(properties[actions])


# --- One data layout ---------------------------------------------------------------------------


def literal_output(synth, output: str) -> list[str]:
    return json.loads(
        render(synth.template_json("processing")["Outputs"][output]["Value"], LITERALS)
    )


def test_layout_is_what_the_jobs_use():
    from jobs import layout
    from jobs.batch import interaction_etl
    from jobs.streaming import records

    assert layout.DEAD_LETTER_PREFIX.startswith(layout.STREAMING_PREFIX)  # Flink's write grant
    assert layout.RAW_EVENTS_PREFIX.startswith(layout.STREAMING_PREFIX)
    assert records.RAW_EVENTS_PREFIX is layout.RAW_EVENTS_PREFIX
    assert interaction_etl.CURATED_TABLE is layout.CURATED_TABLE


def test_layout_imports_only_the_standard_library():
    from jobs import layout

    tree = ast.parse(Path(layout.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {
        "__future__"
    }


def test_step_arguments_name_the_layouts_places(each_env):
    from jobs import layout

    env = each_env.config.env_name
    curated = f"s3://mlp-{env}-curated-123456789012-us-east-1/"
    etl = literal_output(each_env, "SparkJobStepArgs")
    assert etl[:6] == [
        "spark-submit", "--deploy-mode", "cluster", "--py-files", layout.JOBS_ARCHIVE,
        f"{layout.NODE_CODE_DIR}/jobs/batch/interaction_etl.py",
    ]  # fmt: skip
    options = dict(zip(etl[6::2], etl[7::2], strict=True))
    assert options["--raw-path"] == (
        f"s3://mlp-{env}-raw-123456789012-us-east-1/{layout.RAW_EVENTS_PREFIX}/"
    )
    assert options["--curated-path"] == curated + layout.CURATED_PREFIX
    assert options["--features-path"] == curated + layout.FEATURES_PREFIX
    assert options["--quarantine-path"] == curated + layout.QUARANTINE_PREFIX
    assert options["--metrics-path"] == curated + layout.RUNS_PREFIX
    for name in ("Flink", "Spark"):
        bootstrap = cluster(each_env, name)["BootstrapActions"][0]["ScriptBootstrapAction"]
        assert bootstrap["Args"][1] == layout.NODE_CODE_DIR


def test_step_arguments_parse_with_the_jobs_own_parsers(each_env):
    from cdk_constructs.orchestrator import RUN_DATE
    from jobs.batch.feature_ingestion import parse_args as parse_ingestion_args
    from jobs.batch.interaction_etl import parse_args as parse_etl_args
    from jobs.streaming.flink_job import parse_args as parse_flink_args

    flink = literal_output(each_env, "FlinkJobStepArgs")
    module = flink.index("-pym") + 2
    parsed = parse_flink_args(flink[module:])
    assert parsed.topic == "member-interactions"
    assert parsed.group_id == f"ml-platform-{each_env.config.env_name}-raw-ingest"

    def with_date(args: list[str]) -> list[str]:
        # The workflow replaces the placeholder, which must be a whole argument.
        assert RUN_DATE in args
        return [a if a != RUN_DATE else "2026-11-28" for a in args]

    processing = each_env.platform.processing
    resolve = processing.resolve
    etl = [render(resolve(a), LITERALS) for a in processing.spark_etl_args]
    etl_args = parse_etl_args(with_date(etl[6:]))
    assert etl_args.curated_database == f"ml_platform_{each_env.config.env_name}_curated"
    ingestion = [render(resolve(a), LITERALS) for a in processing.feature_ingestion_args]
    assert ingestion[5] == "/home/hadoop/ml-platform/jobs/batch/feature_ingestion.py"
    ingestion_args = parse_ingestion_args(with_date(ingestion[6:]))
    assert ingestion_args.region == "us-east-1"
    assert ingestion_args.feature_group == f"ml-platform-{each_env.config.env_name}-member-features"


# --- The constructs on a bare stack ----------------------------------------------------------


def bare_flink(tmp_path: Path, *, certificates: str, termination_protected: bool) -> dict:
    """A Flink cluster (with a task fleet) and its TLS certificates in a stack of their own."""
    from aws_cdk import App, Stack
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_s3 as s3

    from cdk_constructs.emr import EmrTlsCertificates
    from cdk_constructs.flink_cluster import FlinkCluster
    from cdk_constructs.network import COMPUTE_SUBNETS
    from platform_config.model import EmrClusterConfig, EmrTlsConfig

    app = App(outdir=str(tmp_path / "out"))
    stack = Stack(app, "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    vpc = ec2.Vpc(
        stack,
        "Vpc",
        availability_zones=["eu-west-1a", "eu-west-1b"],
        nat_gateways=1,
        subnet_configuration=[
            ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
            ec2.SubnetConfiguration(
                name=COMPUTE_SUBNETS, subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS
            ),
        ],
    )
    key = kms.Key(stack, "Key")
    artifacts = s3.Bucket(stack, "Artifacts", encryption_key=key)
    tls = EmrTlsCertificates(
        stack,
        "EmrTls",
        config=EmrTlsConfig(certificates=certificates, validity_days=90),
        artifacts_bucket=artifacts,
        encryption_key=key,
        log_retention_days=7,
    )
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text("")
    FlinkCluster(
        stack,
        "Flink",
        config=EmrClusterConfig(
            task_instance_types=["m7g.xlarge", "m6g.xlarge"], ebs_volume_gib=48
        ),
        cluster_name="bare-flink",
        vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_group_name=COMPUTE_SUBNETS),
        encryption_key=key,
        logs_bucket=s3.Bucket(stack, "Logs"),
        artifacts_bucket=artifacts,
        code_directories={"jobs": code},
        tls_certificates=tls,
        termination_protected=termination_protected,
    )
    return app.synth().get_stack_by_name("Bare").template


def test_a_generated_certificate_for_another_region_and_protection_on(tmp_path):
    template = bare_flink(tmp_path, certificates="generated", termination_protected=True)

    _, certificates = resource_of(template, "Custom::EmrTlsCertificates")
    assert certificates["Properties"]["DnsName"] == "*.eu-west-1.compute.internal"
    assert certificates["Properties"]["ValidityDays"] == 90
    _, flink = resource_of(template, "AWS::EMR::Cluster")
    assert flink["Properties"]["Instances"]["TerminationProtected"] is True
    volumes = fleet_volumes(template)
    assert volumes[("Flink", "TASK")] == [ebs(48), ebs(48)]
    assert volumes[("Flink", "MasterInstanceFleet")] == volumes[("Flink", "CoreInstanceFleet")]
    assert volumes[("Flink", "CoreInstanceFleet")] == [ebs(48)]


def test_provided_certificates_create_nothing_and_protection_off(tmp_path):
    template = bare_flink(tmp_path, certificates="provided", termination_protected=False)

    types = {resource["Type"] for resource in template["Resources"].values()}
    assert "Custom::EmrTlsCertificates" not in types
    assert not any(lid.startswith("EmrTls") for lid in template["Resources"])
    _, configuration = resource_of(template, "AWS::EMR::SecurityConfiguration")
    assert configuration["Properties"]["Name"] == "bare-flink-security"
    tls = configuration["Properties"]["SecurityConfiguration"]["EncryptionConfiguration"][
        "InTransitEncryptionConfiguration"
    ]["TLSCertificateConfiguration"]
    assert json.dumps(tls["S3Object"]).endswith('/emr/tls/certificates.zip"]]}')
    _, flink = resource_of(template, "AWS::EMR::Cluster")
    assert flink["Properties"]["Instances"]["TerminationProtected"] is False


def test_the_clusters_build_their_step_arguments():
    from cdk_constructs.flink_cluster import FlinkCluster
    from cdk_constructs.spark_cluster import SparkCluster

    assert SparkCluster.spark_submit_step(script="jobs/batch/x.py", arguments=["--a", "1"]) == [
        "spark-submit", "--deploy-mode", "cluster",
        "--py-files", "/home/hadoop/ml-platform/jobs.zip",
        "/home/hadoop/ml-platform/jobs/batch/x.py", "--a", "1",
    ]  # fmt: skip
    assert FlinkCluster.flink_run_step(name="n", module="jobs.m", arguments=["--b"]) == [
        "flink", "run", "-m", "yarn-cluster", "-d", "-ynm", "n",
        "-pyfs", "/home/hadoop/ml-platform/jobs.zip", "-pym", "jobs.m", "--b",
    ]  # fmt: skip


def test_a_generated_certificate_needs_a_stack_in_a_known_region():
    from aws_cdk import App, Stack
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_s3 as s3

    from cdk_constructs.emr import EmrTlsCertificates
    from platform_config.model import EmrTlsConfig

    stack = Stack(App(), "Agnostic")  # no env: the region is only known at deploy time
    with pytest.raises(ValueError, match="needs a stack with a concrete region"):
        EmrTlsCertificates(
            stack,
            "EmrTls",
            config=EmrTlsConfig(),
            artifacts_bucket=s3.Bucket(stack, "Artifacts"),
            encryption_key=kms.Key(stack, "Key"),
            log_retention_days=7,
        )


def test_bootstrap_knows_the_cluster_kind_and_the_job_loads_the_verified_jars(each_env):
    """Bootstrap actions run before EMR installs Flink, so the construct names the kind; the
    jars stay in the node's jar folder and the streaming job loads them with --jars."""
    from jobs.layout import FLINK_JARS_DIR

    clusters = each_env.template("processing").find_resources("AWS::EMR::Cluster")
    kinds = {}
    for cluster in clusters.values():
        (action,) = cluster["Properties"]["BootstrapActions"]
        *_, kind = action["ScriptBootstrapAction"]["Args"]
        kinds[kind] = cluster
    assert set(kinds) == {"flink", "spark"}
    (step,) = kinds["flink"]["Properties"]["Steps"]
    args = step["HadoopJarStep"]["Args"]
    jars = args[args.index("--jars") + 1].split(",")
    table = (Path(__file__).resolve().parents[1] / "jobs" / "emr" / "jar-checksums.txt").read_text()
    table = table.splitlines()
    urls = [line.split()[2] for line in table if line.strip() and not line.startswith("#")]
    assert jars == [f"file://{FLINK_JARS_DIR}/{url.rsplit('/', 1)[1]}" for url in urls]
