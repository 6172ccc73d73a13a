"""Network: private tiers, flow logs, endpoints, sizes per environment."""

from __future__ import annotations

from aws_cdk.assertions import Match


def resources(synth, stack, cfn_type):
    return synth.template(stack).find_resources(cfn_type)


def test_vpc_uses_the_configured_range(each_env):
    each_env.template("network").has_resource_properties(
        "AWS::EC2::VPC", {"CidrBlock": each_env.config.network.cidr}
    )


def test_subnets_span_exactly_the_configured_zones(each_env):
    zones = {
        subnet["Properties"]["AvailabilityZone"]
        for subnet in resources(each_env, "network", "AWS::EC2::Subnet").values()
    }
    assert zones == set(each_env.config.availability_zones)


def test_three_tiers_per_zone_and_only_ingress_is_public(each_env):
    subnets = resources(each_env, "network", "AWS::EC2::Subnet").values()
    zone_count = len(each_env.config.availability_zones)
    assert len(subnets) == 3 * zone_count
    public = [s for s in subnets if s["Properties"].get("MapPublicIpOnLaunch")]
    assert len(public) == zone_count
    for subnet in public:
        assert {"Key": "aws-cdk:subnet-name", "Value": "ingress"} in subnet["Properties"]["Tags"]


def test_nat_gateway_count_follows_config(dev, prod):
    assert len(resources(dev, "network", "AWS::EC2::NatGateway")) == 1
    assert len(resources(prod, "network", "AWS::EC2::NatGateway")) == 3


def test_data_subnets_have_no_route_out(each_env):
    template = each_env.template("network")
    routes = template.find_resources("AWS::EC2::Route")
    tables = template.find_resources("AWS::EC2::RouteTable")
    data_tables = {
        logical_id
        for logical_id, table in tables.items()
        for tag in table["Properties"]["Tags"]
        if tag["Key"] == "Name" and "/Vpc/dataSubnet" in tag["Value"]
    }
    assert len(data_tables) == len(each_env.config.availability_zones)
    for route in routes.values():
        assert route["Properties"]["RouteTableId"]["Ref"] not in data_tables


def test_all_traffic_flow_logs_to_an_encrypted_group(each_env):
    template = each_env.template("network")
    template.has_resource_properties(
        "AWS::EC2::FlowLog",
        {"ResourceType": "VPC", "TrafficType": "ALL", "LogDestinationType": "cloud-watch-logs"},
    )
    template.has_resource_properties(
        "AWS::Logs::LogGroup",
        {
            "KmsKeyId": {"Fn::GetAtt": [Match.string_like_regexp("FlowLogKey"), "Arn"]},
            "RetentionInDays": each_env.config.network.flow_log_retention_days,
        },
    )
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})


def test_default_security_group_is_restricted(each_env):
    each_env.template("network").resource_count_is("Custom::VpcRestrictDefaultSG", 1)


def test_gateway_endpoints_for_s3_and_dynamodb(each_env):
    endpoints = resources(each_env, "network", "AWS::EC2::VPCEndpoint").values()
    gateways = [e for e in endpoints if e["Properties"].get("VpcEndpointType") == "Gateway"]
    services = sorted(str(e["Properties"]["ServiceName"]) for e in gateways)
    assert len(services) == 2
    assert "dynamodb" in services[0]
    assert ".s3" in services[1]


def test_interface_endpoints_match_config_with_private_dns(each_env):
    endpoints = resources(each_env, "network", "AWS::EC2::VPCEndpoint").values()
    interfaces = [e for e in endpoints if e["Properties"].get("VpcEndpointType") == "Interface"]
    assert len(interfaces) == len(each_env.config.network.interface_endpoints)
    for endpoint in interfaces:
        assert endpoint["Properties"]["PrivateDnsEnabled"] is True
        assert len(endpoint["Properties"]["SecurityGroupIds"]) == 1


def test_endpoint_security_group_admits_only_https_from_the_vpc(each_env):
    each_env.template("network").has_resource_properties(
        "AWS::EC2::SecurityGroup",
        {
            "GroupDescription": "HTTPS from inside the VPC to its interface endpoints",
            "SecurityGroupIngress": [
                {
                    "CidrIp": each_env.config.network.cidr,
                    "FromPort": 443,
                    "ToPort": 443,
                    "IpProtocol": "tcp",
                    "Description": Match.any_value(),
                }
            ],
        },
    )


def test_every_configurable_endpoint_maps_to_a_cdk_service():
    import typing

    from cdk_constructs.network import INTERFACE_ENDPOINT_SERVICES
    from platform_config.model import InterfaceEndpointName

    assert set(INTERFACE_ENDPOINT_SERVICES) == set(typing.get_args(InterfaceEndpointName))
    for name, service in INTERFACE_ENDPOINT_SERVICES.items():
        assert service.short_name == name
