"""Platform-wide promises: the tag contract, cdk-nag, stack protection, pinned logical IDs."""

from __future__ import annotations

import re

import pytest
from aws_cdk import App
from aws_cdk import aws_s3 as s3
from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

from cdk_constructs.base import CONTAINER_TAG, ENV_TAG, STEREOTYPE_TAG
from cdk_constructs.data_lake import _BUCKET_NOTIFICATIONS_SINGLETON
from cdk_constructs.emr import _BUCKET_DEPLOYMENT_SINGLETON
from platform_config import load_config
from stacks.platform import build_platform
from tests.checkov.reasons import assert_specific_reason
from tests.conftest import CDK_CONTEXT

# The brief's contract: construct id in a stack -> (container tag, stereotype tag).
TAG_CONTRACT = {
    "Network": ("network", "network"),
    "DataLake": ("data-lake", "data-lake"),
    "DataCatalog": ("hive-metastore", "data-catalog"),
    "OnlineStore": ("cassandra", "online-store"),
    "Kafka": ("kafka", "event-streaming"),
    "Flink": ("flink", "stream-processing"),
    "Spark": ("spark", "batch-processing"),
    "MetaflowMetadata": ("metaflow-metadata", "metadata-store"),
    "MetaflowClient": ("metaflow-client", "workflow-sdk"),
    "Orchestrator": ("maestro", "orchestrator"),
    "Training": ("training", "model-training"),
    "ModelRegistry": ("model-registry", "model-registry"),
    "FeatureStore": ("feature-store", "feature-store"),
    "Alerting": ("monitoring", "ml-monitoring"),
    "Prometheus": ("monitoring", "ml-monitoring"),
    "ModelMonitoring": ("monitoring", "ml-monitoring"),
    "Overview": ("monitoring", "ml-monitoring"),
    "Experiments": ("ablaze", "experimentation"),
    "Experimentation": ("ablaze", "experimentation"),
    # Each stack's area dashboard and alarms (AreaMonitoring).
    **{
        f"{area}Monitoring": ("monitoring", "ml-monitoring")
        for area in (
            "Streaming",
            "Processing",
            "Data",
            "Metadata",
            "Workflows",
            "Training",
            "Serving",
            "ServingModels1",
            "Experimentation",
        )
    },
    "Serving": ("serving", "model-serving"),
    "ModelRecommender": ("serving", "model-serving"),
    "Delivery": ("spinnaker", "continuous-delivery"),
    "CanaryRecommender": ("spinnaker", "continuous-delivery"),
    "EmrTls": ("emr-tls", "certificates"),
}

STACKS = (
    "alerts",
    "network",
    "data",
    "streaming",
    "processing",
    "metaflow",
    "orchestration",
    "serving",
    "serving-models-1",
)

# Lambda-backed helpers the CDK itself creates once per stack, outside every container
# (the bootstrap-broker reader, the code deployment handler, the bucket-notification
# handler); they carry the env tag only.
CDK_SINGLETONS = {
    "AWS679f53fac002430cb0da5b7982bd2287",
    _BUCKET_DEPLOYMENT_SINGLETON,
    _BUCKET_NOTIFICATIONS_SINGLETON,
}

# The CDK creates these singleton providers at stack scope as raw CfnResources, outside every
# container and beyond the reach of Tags.of(); they are tiny deploy-time helpers.
UNTAGGABLE_CDK_PROVIDERS = re.compile(r"^Custom[A-Za-z0-9]+CustomResourceProvider(Role|Handler)")

# Stateful resources: a changed logical ID would replace them and lose their data.
PINNED_DATA_LOGICAL_IDS = {
    "DataLakeKey6ACD72F9": "AWS::KMS::Key",
    "DataLakeLogsBucketC579BDB7": "AWS::S3::Bucket",
    "DataLakeRawBucket881B694B": "AWS::S3::Bucket",
    "DataLakeCuratedBucketFF1C9EA8": "AWS::S3::Bucket",
    "DataLakeArtifactsBucket98FD8488": "AWS::S3::Bucket",
    "DataCatalogRawDatabaseCA4BC603": "AWS::Glue::Database",
    "DataCatalogCuratedDatabaseBCD3463E": "AWS::Glue::Database",
    "DataCatalogFeaturesDatabaseF652FCD6": "AWS::Glue::Database",
    "DataCatalogSchemaRegistryF0D5B7F9": "AWS::Glue::Registry",
    "OnlineStoreKeyspace30C26C2C": "AWS::Cassandra::Keyspace",
    "OnlineStoreMemberProfileTableE2C7787A": "AWS::Cassandra::Table",
    "OnlineStorePredictionsTable2A822C14": "AWS::Cassandra::Table",
    "OnlineStoreMemberHistoryTable46312176": "AWS::Cassandra::Table",
    "DataCatalogSchemaMemberInteractions4A0717E2": "AWS::Glue::Schema",
}
PINNED_ALERTS_LOGICAL_IDS = {
    # A replaced topic loses its confirmed subscriptions; the key decrypts queued dead letters.
    "AlertingKeyF32BC376": "AWS::KMS::Key",
    "AlertingTopic08189029": "AWS::SNS::Topic",
}
PINNED_METAFLOW_LOGICAL_IDS = {
    "MetaflowMetadataKeyCD85FF28": "AWS::KMS::Key",
    "MetaflowMetadataDatabaseDCE71082": "AWS::RDS::DBInstance",
    "MetaflowClientStepFunctionsState52EFFAE2": "AWS::DynamoDB::GlobalTable",
}
PINNED_STREAMING_LOGICAL_IDS = {
    "KafkaCluster7185C948": "AWS::MSK::Cluster",
    "KafkaConfiguration2E1CE142": "AWS::MSK::Configuration",
    "KafkaTopicMemberInteractionsC129F1FE": "AWS::MSK::Topic",
}


def is_taggable(region: str, cfn_type: str) -> bool:
    if cfn_type.startswith("Custom::") or cfn_type == "AWS::CDK::Metadata":
        return False
    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(region, cfn_type).schema
    return schema.get("tagging", {}).get("taggable", "Tags" in schema.get("properties", {}))


def tag_map(resource: dict) -> dict[str, str]:
    tags = resource.get("Properties", {}).get("Tags", [])
    if isinstance(tags, dict):  # a few L1 types take a plain map
        return tags
    return {tag["Key"]: tag["Value"] for tag in tags}


@pytest.mark.parametrize("stack", STACKS)
def test_every_taggable_resource_carries_the_tag_contract(each_env, stack):
    resources = each_env.template_json(stack)["Resources"]
    checked = 0
    for logical_id, resource in resources.items():
        if UNTAGGABLE_CDK_PROVIDERS.match(logical_id):
            continue
        if not is_taggable(each_env.config.region, resource["Type"]):
            continue
        construct_id = resource["Metadata"]["aws:cdk:path"].split("/")[1]
        tags = tag_map(resource)
        assert tags.get(ENV_TAG) == each_env.config.env_name, logical_id
        if construct_id in CDK_SINGLETONS:
            continue
        container, stereotype = TAG_CONTRACT[construct_id]
        assert tags.get(CONTAINER_TAG) == container, logical_id
        assert tags.get(STEREOTYPE_TAG) == stereotype, logical_id
        checked += 1
    assert checked >= 2


def test_only_the_cdk_providers_are_exempt(dev):
    # Their construct paths, below the stack: the CDK's own stack-level providers, no
    # container's resource.
    exempt = [
        resource["Metadata"]["aws:cdk:path"].split("/", 1)[1]
        for stack in STACKS
        for lid, resource in dev.template_json(stack)["Resources"].items()
        if UNTAGGABLE_CDK_PROVIDERS.match(lid)
    ]
    assert sorted(exempt) == [
        "Custom::S3AutoDeleteObjectsCustomResourceProvider/Handler",
        "Custom::S3AutoDeleteObjectsCustomResourceProvider/Role",
        "Custom::VpcRestrictDefaultSGCustomResourceProvider/Handler",
        "Custom::VpcRestrictDefaultSGCustomResourceProvider/Role",
    ]


def test_user_tags_reach_every_resource(tmp_path):
    config = load_config(env="dev").model_copy(update={"tags": {"cost-center": "ml-42"}})
    app = App(context=CDK_CONTEXT, outdir=str(tmp_path))
    platform = build_platform(app, config)
    bucket = platform.data.node.find_child("DataLake").node.find_child("RawBucket")
    assembly = app.synth()
    template = assembly.get_stack_by_name(platform.data.stack_name).template
    raw = template["Resources"][platform.data.get_logical_id(bucket.node.default_child)]
    assert tag_map(raw)["cost-center"] == "ml-42"


def test_synth_fails_on_an_unacknowledged_nag_finding(tmp_path):
    app = App(context=CDK_CONTEXT, outdir=str(tmp_path))
    platform = build_platform(app, load_config(env="dev"))
    s3.Bucket(platform.data, "CarelessBucket")  # no TLS enforcement, no access logs
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = (tmp_path / "validation-report.json").read_text()
    assert "AwsSolutions-S10" in report
    assert "CarelessBucket" in report


def acknowledgments(app: App) -> list[tuple[str, str, str]]:
    found = []
    for construct in app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == "aws:cdk:acknowledged-rules":
                for rule, reason in entry.data.items():
                    found.append((construct.node.path, rule.split("::")[-1], reason))
    return found


def test_acknowledgments_give_specific_reasons(each_env):
    found = acknowledgments(each_env.app)
    assert found, "expected at least the logs bucket's acknowledgment"
    for path, rule, reason in found:
        assert_specific_reason(path, rule, reason)


def test_stateful_stacks_are_protected_only_in_prod(dev, prod):
    for name in ("data", "streaming", "metaflow"):
        assert getattr(prod.platform, name).termination_protection is True
        assert getattr(dev.platform, name).termination_protection is False
    # Network, processing, orchestration and serving are stateless and can be recreated.
    for name in ("network", "processing", "orchestration", "serving"):
        assert getattr(prod.platform, name).termination_protection is False


def test_stacks_are_named_for_the_environment_and_pinned_to_its_region(each_env):
    prefix = f"ml-platform-{each_env.config.env_name}"
    assert [s.stack_name for s in each_env.platform.stacks] == [
        f"{prefix}-{name}" for name in STACKS
    ]
    for stack in each_env.platform.stacks:
        assert stack.region == each_env.config.region


def test_dependency_chain_stays_short(each_env):
    """alerts, network and data deploy in parallel, then streaming, then processing."""
    platform = each_env.platform

    def names(stack):
        return sorted(d.stack_name.rsplit("-", 1)[1] for d in stack.dependencies)

    assert names(platform.alerts) == []
    assert names(platform.network) == []
    assert names(platform.data) == ["alerts"]
    assert names(platform.streaming) == ["data", "network"]
    assert names(platform.processing) == ["alerts", "data", "network", "streaming"]
    assert names(platform.metaflow) == ["alerts", "data", "network"]
    assert names(platform.orchestration) == ["alerts", "data", "network", "processing"]
    assert names(platform.serving) == ["alerts", "data", "network"]
    (models,) = platform.model_services
    assert sorted(d.stack_name for d in models.dependencies) == [
        f"{each_env.config.resource_prefix}-{name}"
        for name in ("alerts", "data", "network", "serving")
    ]


@pytest.mark.parametrize(
    ("stack", "pinned"),
    [
        ("alerts", PINNED_ALERTS_LOGICAL_IDS),
        ("data", PINNED_DATA_LOGICAL_IDS),
        ("streaming", PINNED_STREAMING_LOGICAL_IDS),
        ("metaflow", PINNED_METAFLOW_LOGICAL_IDS),
    ],
)
def test_stateful_logical_ids_are_pinned(each_env, stack, pinned):
    resources = each_env.template_json(stack)["Resources"]
    for logical_id, cfn_type in pinned.items():
        assert resources.get(logical_id, {}).get("Type") == cfn_type, logical_id
