"""KafkaCluster: IAM-only MSK with TLS, the platform key, declared topics and durability."""

from __future__ import annotations

from aws_cdk.assertions import Match


def cluster(synth) -> dict:
    (found,) = synth.template("streaming").find_resources("AWS::MSK::Cluster").values()
    return found["Properties"]


def test_iam_is_the_only_client_authentication(each_env):
    auth = cluster(each_env)["ClientAuthentication"]
    assert auth == {"Sasl": {"Iam": {"Enabled": True}}}


def test_tls_in_transit_and_the_platform_key_at_rest(each_env):
    encryption = cluster(each_env)["EncryptionInfo"]
    assert encryption["EncryptionInTransit"] == {"ClientBroker": "TLS", "InCluster": True}
    key = encryption["EncryptionAtRest"]["DataVolumeKMSKeyId"]
    assert "DataLakeKey" in str(key)


def test_brokers_span_the_zones_in_the_data_subnets(each_env):
    properties = cluster(each_env)
    zones = len(each_env.config.availability_zones)
    # CloudFormation takes the cluster total; config says per zone.
    assert properties["NumberOfBrokerNodes"] == each_env.config.kafka.brokers_per_zone * zones
    subnets = properties["BrokerNodeGroupInfo"]["ClientSubnets"]
    assert len(subnets) == zones
    assert all("dataSubnet" in str(subnet) for subnet in subnets)
    assert properties["BrokerNodeGroupInfo"]["InstanceType"] == (
        each_env.config.kafka.broker_instance_type
    )


def test_durability_is_enforced_by_the_broker_configuration(each_env):
    kafka = each_env.config.kafka
    (configuration,) = (
        each_env.template("streaming").find_resources("AWS::MSK::Configuration").values()
    )
    settings = configuration["Properties"]["ServerProperties"].splitlines()
    assert "auto.create.topics.enable=false" in settings
    assert f"default.replication.factor={kafka.replication_factor}" in settings
    assert f"min.insync.replicas={kafka.min_insync_replicas}" in settings
    assert "unclean.leader.election.enable=false" in settings
    assert cluster(each_env)["ConfigurationInfo"]["Arn"]["Fn::GetAtt"][0].startswith(
        "KafkaConfiguration"
    )


def test_declared_topics_exist_with_their_settings(each_env):
    topics = each_env.template("streaming").find_resources("AWS::MSK::Topic")
    declared = {t.name: t for t in each_env.config.kafka.topics}
    assert {t["Properties"]["TopicName"] for t in topics.values()} == set(declared)
    for topic in topics.values():
        properties = topic["Properties"]
        config = declared[properties["TopicName"]]
        assert properties["PartitionCount"] == config.partitions
        assert properties["ReplicationFactor"] == each_env.config.kafka.replication_factor
        # CloudFormation base64-encodes the properties text at deploy time.
        configs = properties["Configs"]["Fn::Base64"]
        assert f"retention.ms={config.retention_hours * 3_600_000}" in configs


def test_broker_logs_go_to_an_encrypted_group(each_env):
    logs = cluster(each_env)["LoggingInfo"]["BrokerLogs"]["CloudWatchLogs"]
    assert logs["Enabled"] is True
    each_env.template("streaming").has_resource_properties(
        "AWS::Logs::LogGroup",
        {
            "KmsKeyId": Match.any_value(),
            "RetentionInDays": each_env.config.kafka.log_retention_days,
        },
    )


def test_monitoring_level_and_storage_scaling_follow_config(dev, prod):
    assert cluster(dev)["EnhancedMonitoring"] == "DEFAULT"
    assert cluster(prod)["EnhancedMonitoring"] == "PER_TOPIC_PER_BROKER"
    dev.template("streaming").resource_count_is("AWS::ApplicationAutoScaling::ScalableTarget", 0)
    prod.template("streaming").has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {
            "ScalableDimension": "kafka:broker-storage:VolumeSize",
            "MinCapacity": prod.config.kafka.ebs_volume_gib,
            "MaxCapacity": prod.config.kafka.storage_autoscaling_max_gib,
        },
    )


def test_broker_security_group_admits_only_flink_on_the_iam_port(each_env):
    template = each_env.template("streaming")
    (group,) = template.find_resources("AWS::EC2::SecurityGroup").values()
    assert "SecurityGroupIngress" not in group["Properties"]  # no producer CIDRs configured
    ingress = each_env.template("processing").find_resources("AWS::EC2::SecurityGroupIngress")
    to_brokers = [r["Properties"] for r in ingress.values() if r["Properties"]["FromPort"] == 9098]
    groups = each_env.template("processing").find_resources("AWS::EC2::SecurityGroup")
    sources = sorted(
        groups[rule["SourceSecurityGroupId"]["Fn::GetAtt"][0]]["Properties"]["GroupDescription"]
        for rule in to_brokers
    )
    cluster = f"{each_env.config.resource_prefix}-flink"
    assert sources == [f"EMR core and task nodes of {cluster}", f"EMR primary node of {cluster}"]
    assert all(rule["ToPort"] == 9098 for rule in to_brokers)


def test_bootstrap_brokers_are_published_from_the_cluster(each_env):
    name = f"/ml-platform-{each_env.config.env_name}/kafka/bootstrap-brokers"
    template = each_env.template("streaming")
    (parameter,) = [
        p["Properties"]
        for p in template.find_resources("AWS::SSM::Parameter").values()
        if p["Properties"]["Name"] == name
    ]
    # Read by the L2's custom resource (GetBootstrapBrokers), never typed by hand.
    assert parameter["Value"]["Fn::GetAtt"][1] == "BootstrapBrokerStringSaslIam"
    template.resource_count_is("Custom::AWS", 1)
