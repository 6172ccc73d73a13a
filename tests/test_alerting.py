"""Alerting: one encrypted topic that every alarm and failed run reaches, and keys whose
policies admit the services that must use them."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, RemovalPolicy, Stack
from aws_cdk.assertions import Template

from cdk_constructs.alerting import ALERT_PUBLISHERS, Alerting


def every_resource(synth, cfn_type: str) -> list[tuple[dict, str, dict]]:
    """(template, logical id, resource) of `cfn_type` across every stack of the platform."""
    found = []
    for stack in synth.platform.stacks:
        template = synth.template_json(
            stack.node.id.removeprefix(f"{synth.config.resource_prefix}-")
        )
        for lid, resource in template["Resources"].items():
            if resource["Type"] == cfn_type:
                found.append((template, lid, resource))
    return found


def alerts_topic(synth) -> str:
    return f"{synth.config.resource_prefix}-alerts"


def test_alert_topic_is_encrypted_with_its_own_rotating_key_and_tls_only(each_env):
    template = each_env.template_json("alerts")
    resources = template["Resources"]
    (topic,) = [r for r in resources.values() if r["Type"] == "AWS::SNS::Topic"]
    assert topic["Properties"]["TopicName"] == alerts_topic(each_env)
    key_id = topic["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    assert resources[key_id]["Properties"]["EnableKeyRotation"] is True
    (policy,) = [r for r in resources.values() if r["Type"] == "AWS::SNS::TopicPolicy"]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )


def test_alerts_reach_the_configured_subscribers(each_env):
    subscriptions = [
        r["Properties"]
        for r in each_env.template_json("alerts")["Resources"].values()
        if r["Type"] == "AWS::SNS::Subscription"
    ]
    assert sorted(s["Endpoint"] for s in subscriptions) == sorted(each_env.config.alerts.emails)
    assert all(s["Protocol"] == "email" for s in subscriptions)


def bare_alerting(emails: list[str]) -> Template:
    stack = Stack(App(), "Bare", env={"account": "123456789012", "region": "eu-west-1"})
    Alerting(
        stack, "Alerts", name_prefix="bare", emails=emails, removal_policy=RemovalPolicy.DESTROY
    )
    return Template.from_stack(stack)


@pytest.mark.parametrize(
    "emails", [["oncall@example.com"], ["oncall@example.com", "ml-team@example.org"]]
)
def test_each_address_subscribes_to_the_topic_by_email(emails):
    template = bare_alerting(emails)
    template.resource_count_is("AWS::SNS::Subscription", len(emails))
    (topic_id,) = template.find_resources("AWS::SNS::Topic")
    subscriptions = [
        r["Properties"] for r in template.find_resources("AWS::SNS::Subscription").values()
    ]
    assert sorted(s["Endpoint"] for s in subscriptions) == sorted(emails)
    for subscription in subscriptions:
        assert subscription["Protocol"] == "email"
        assert subscription["TopicArn"] == {"Ref": topic_id}


def test_without_addresses_the_topic_has_no_subscriber_but_still_takes_alerts():
    template = bare_alerting([])
    template.resource_count_is("AWS::SNS::Subscription", 0)
    template.resource_count_is("AWS::SNS::Topic", 1)
    (policy,) = template.find_resources("AWS::SNS::TopicPolicy").values()
    (publish,) = _statements_for_services(policy["Properties"]["PolicyDocument"])
    assert publish["Action"] == "sns:Publish"


def test_prod_has_someone_to_tell(prod):
    assert prod.config.alerts.emails


def _statements_for_services(document: dict) -> list[dict]:
    return [s for s in document["Statement"] if "Service" in s.get("Principal", {})]


def test_the_services_that_publish_alerts_may_use_the_key_and_the_topic(each_env):
    resources = each_env.template_json("alerts")["Resources"]
    (key,) = [r for r in resources.values() if r["Type"] == "AWS::KMS::Key"]
    (grant,) = _statements_for_services(key["Properties"]["KeyPolicy"])
    assert sorted(grant["Principal"]["Service"]) == sorted(ALERT_PUBLISHERS)
    assert set(grant["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert grant["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    (policy,) = [r for r in resources.values() if r["Type"] == "AWS::SNS::TopicPolicy"]
    (publish,) = _statements_for_services(policy["Properties"]["PolicyDocument"])
    assert sorted(publish["Principal"]["Service"]) == sorted(ALERT_PUBLISHERS)
    assert publish["Action"] == "sns:Publish"


def _acts_on_scaling(template: dict, alarm: dict) -> bool:
    return any(
        template["Resources"].get(action.get("Ref"), {}).get("Type")
        == "AWS::ApplicationAutoScaling::ScalingPolicy"
        for action in alarm["Properties"]["AlarmActions"]
    )


def test_every_alarm_of_every_stack_notifies_the_alert_topic(each_env):
    alarms = [
        (template, lid, alarm)
        for template, lid, alarm in every_resource(each_env, "AWS::CloudWatch::Alarm")
        # Step scaling's own alarms act on a scaling policy; they are not for a person.
        if not _acts_on_scaling(template, alarm)
    ]
    assert len(alarms) >= 4
    for _, lid, alarm in alarms:
        for actions in ("AlarmActions", "OKActions"):
            (action,) = alarm["Properties"][actions]
            assert alerts_topic(each_env) in json.dumps(action), lid


def test_rules_publish_only_to_the_alert_topic_whose_key_admits_eventbridge(each_env):
    topics = [
        target
        for _, _, rule in every_resource(each_env, "AWS::Events::Rule")
        for target in rule["Properties"]["Targets"]
        if ":sns:" in json.dumps(target["Arn"])
    ]
    assert topics
    for target in topics:
        assert alerts_topic(each_env) in json.dumps(target["Arn"])


def test_every_queue_is_encrypted_with_a_kms_key(each_env):
    queues = every_resource(each_env, "AWS::SQS::Queue")
    assert queues
    for _, lid, queue in queues:
        assert "KmsMasterKeyId" in queue["Properties"], lid


def _key_of(synth, template: dict, reference: dict) -> dict:
    """The key resource a KmsKeyId points to, following a cross-stack reference."""
    if "Fn::GetStackOutput" in reference:
        output = reference["Fn::GetStackOutput"]
        other = synth.assembly.get_stack_by_name(output["StackName"]).template
        return _key_of(synth, other, other["Outputs"][output["OutputName"]]["Value"])
    return template["Resources"][reference["Fn::GetAtt"][0]]


def test_every_encrypted_log_group_uses_a_key_that_admits_cloudwatch_logs(each_env):
    encrypted = [
        (template, lid, group)
        for template, lid, group in every_resource(each_env, "AWS::Logs::LogGroup")
        if "KmsKeyId" in group["Properties"]
    ]
    assert len(encrypted) >= 3
    logs = f"logs.{each_env.config.region}.amazonaws.com"
    for template, lid, group in encrypted:
        key = _key_of(each_env, template, group["Properties"]["KmsKeyId"])
        services = [
            s["Principal"]["Service"]
            for s in key["Properties"]["KeyPolicy"]["Statement"]
            if "Service" in s.get("Principal", {})
        ]
        assert logs in json.dumps(services), lid


def test_every_eventbridge_and_scheduler_target_keeps_what_it_cannot_deliver(each_env):
    targets = [
        (lid, target)
        for _, lid, rule in every_resource(each_env, "AWS::Events::Rule")
        for target in rule["Properties"]["Targets"]
    ] + [
        (lid, schedule["Properties"]["Target"])
        for _, lid, schedule in every_resource(each_env, "AWS::Scheduler::Schedule")
    ]
    assert len(targets) >= 9
    for lid, target in targets:
        assert "DeadLetterConfig" in target, lid
        assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 2, lid


def test_roles_that_publish_alerts_may_use_the_alert_key(each_env):
    publishers = []
    for _, lid, policy in every_resource(each_env, "AWS::IAM::Policy"):
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        if any(
            "sns:Publish" in json.dumps(s["Action"]) and alerts_topic(each_env) in json.dumps(s)
            for s in statements
        ):
            publishers.append(lid)
            assert any(
                "kms:GenerateDataKey" in s["Action"]
                and s["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"]
                == f"alias/{each_env.config.resource_prefix}/alerts"
                for s in statements
                if "Condition" in s
            ), lid
    # The delivery workflow notifies every outcome.
    assert publishers


def test_keys_are_granted_only_for_aws_resources(each_env):
    """kms:CreateGrant lets a principal hand key use to anyone; every grant of it here is
    limited to grants a service makes for an AWS resource (EBS volumes, training jobs)."""
    statements = [
        (lid, s)
        for _, lid, policy in every_resource(each_env, "AWS::IAM::Policy")
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if "kms:CreateGrant" in json.dumps(s["Action"])
    ]
    assert len(statements) >= 4
    for lid, statement in statements:
        assert statement["Action"] == "kms:CreateGrant", lid
        assert statement["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}, lid
