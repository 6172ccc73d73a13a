"""Flink and Spark clusters: hardened EMR, fleets, and the least privilege of each arrow."""

from __future__ import annotations

import json

import pytest


def cluster(synth, name: str) -> dict:
    clusters = synth.template("processing").find_resources("AWS::EMR::Cluster")
    (found,) = [c for lid, c in clusters.items() if lid.startswith(name)]
    return found["Properties"]


def policy_statements(synth, role_prefix: str) -> list[dict]:
    policies = synth.template("processing").find_resources("AWS::IAM::Policy")
    (policy,) = [p for lid, p in policies.items() if lid.startswith(f"{role_prefix}InstanceRole")]
    return policy["Properties"]["PolicyDocument"]["Statement"]


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
    statements = policy_statements(each_env, "Flink")
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
    statements = policy_statements(each_env, "Flink")
    env = each_env.config.env_name
    raw_statements = [s for s in statements if f"mlp-{env}-raw-" in json.dumps(s["Resource"])]
    for statement in raw_statements:
        assert json.dumps(statement["Resource"]).count("/streaming/*") >= 1
    assert "s3:PutObject" in actions_on(raw_statements, "/streaming/*")
    assert not any("s3:GetObject" in json.dumps(s["Action"]) for s in raw_statements)
    assert actions_on(statements, f"mlp-{env}-curated-") == set()


def test_spark_reads_raw_writes_curated_and_maintains_catalog_tables(each_env):
    statements = policy_statements(each_env, "Spark")
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


def test_all_emr_resources_carry_the_managed_policy_tag(each_env):
    for cfn_type in ("AWS::EMR::Cluster", "AWS::EC2::SecurityGroup"):
        for resource in each_env.template("processing").find_resources(cfn_type).values():
            tags = {t["Key"]: t["Value"] for t in resource["Properties"]["Tags"]}
            assert tags["for-use-with-amazon-emr-managed-policies"] == "true"


def step_args(synth, output: str) -> str:
    """The step's argument list as rendered in the template (tokens as CloudFormation JSON)."""
    return json.dumps(synth.template_json("processing")["Outputs"][output]["Value"])


def test_step_paths_match_what_the_jobs_write_and_read(each_env):
    from jobs.streaming.records import DEAD_LETTER_PREFIX, VALID_PREFIX
    from stacks.processing_stack import RAW_EVENTS_PREFIX, STREAMING_PREFIX

    assert RAW_EVENTS_PREFIX == VALID_PREFIX
    assert DEAD_LETTER_PREFIX.startswith(STREAMING_PREFIX)  # inside Flink's write grant
    spark = step_args(each_env, "SparkJobStepArgs")
    assert f"/{VALID_PREFIX}/" in spark
    assert "jobs/batch/interaction_etl.py" in spark


def test_step_arguments_parse_with_the_jobs_own_parsers(each_env):
    from jobs.batch.interaction_etl import parse_args as parse_etl_args
    from jobs.streaming.flink_job import parse_args as parse_flink_args

    def literal_args(output: str) -> list[str]:
        # Replace each CloudFormation token by a plausible literal of its kind.
        text = step_args(each_env, output)
        joined = json.loads(text)["Fn::Join"][1]
        literals = {
            "Fn::GetStackOutput": "b-1.example:9098,b-2.example:9098",  # the brokers
            "AWS::AccountId": "123456789012",
            "AWS::Region": "us-east-1",
        }
        rendered = "".join(
            part
            if isinstance(part, str)
            else next(value for key, value in literals.items() if key in json.dumps(part))
            for part in joined
        )
        return json.loads(rendered)

    flink = literal_args("FlinkJobStepArgs")
    module = flink.index("-pym") + 2
    parsed = parse_flink_args(flink[module:])
    assert parsed.topic == "member-interactions"
    assert parsed.group_id == f"ml-platform-{each_env.config.env_name}-raw-ingest"

    spark = literal_args("SparkJobStepArgs")
    script = next(i for i, a in enumerate(spark) if a.endswith("interaction_etl.py"))
    etl = parse_etl_args([a if a != "{run_date}" else "2026-11-28" for a in spark[script + 1 :]])
    assert etl.curated_database == f"ml_platform_{each_env.config.env_name}_curated"
