"""Wildcard acknowledgments: the IAM5 findings derived from a policy are exactly cdk-nag's, and
only those an expected pattern matches are acknowledged, once, with that pattern's reason."""

from __future__ import annotations

import json

import pytest
from aws_cdk import App, Aspects, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks

from cdk_constructs.base import (
    WILDCARD_RULE,
    AcknowledgeWildcardGrants,
    acknowledge_wildcard_grants,
    flatten_cfn_reference,
    wildcard_findings,
)
from tests.conftest import CDK_CONTEXT

ENV = {"account": "123456789012", "region": "eu-west-1"}
READ_REASON = "Reads every object under the bucket's data/ prefix, which only this role reads."
ACTION_REASON = "Object reads only, on a bucket whose data/ prefix is read-only by design."


def statement(effect: str = "Allow", **fields: object) -> dict:
    return {"Effect": effect, **fields}


@pytest.mark.parametrize(
    ("value", "flat"),
    [
        ("arn:aws:s3:::bucket/*", "arn:aws:s3:::bucket/*"),
        ({"Fn::Sub": "arn:${AWS::Partition}:s3:::b/*"}, "arn:<AWS::Partition>:s3:::b/*"),
        (
            {"Fn::Join": ["", [{"Fn::GetAtt": ["Bucket83908E77", "Arn"]}, "/data/*"]]},
            "<Bucket83908E77.Arn>/data/*",
        ),
        ({"Ref": "AWS::AccountId"}, "<AWS::AccountId>"),
        ({"Fn::ImportValue": "shared-bucket-arn"}, "shared-bucket-arn"),
        ({"Fn::Select": [0, ["a/*", "b"]]}, '{"Fn::Select":[0,["a/*","b"]]}'),
        (None, ""),
    ],
)
def test_references_flatten_as_cdk_nag_writes_them(value, flat):
    assert flatten_cfn_reference(value) == flat


def test_findings_are_wildcard_actions_then_resources_of_each_allow_statement():
    document = {
        "Statement": [
            statement(Action=["s3:GetObject*", "s3:PutObject"], Resource="arn:aws:s3:::b/*"),
            statement(Action="kms:Decrypt", Resource=["arn:aws:kms:::key/k", "*"]),
            statement(Action="s3:List*", Resource="arn:aws:s3:::b/*"),
        ]
    }
    assert wildcard_findings(document) == [
        "Action::s3:GetObject*",
        "Resource::arn:aws:s3:::b/*",
        "Resource::*",
        "Action::s3:List*",
    ]


def test_deny_statements_have_no_findings():
    document = {"Statement": [statement("Deny", Action="s3:*", Resource="*")]}
    assert wildcard_findings(document) == []


def cdk_nag_wildcard_findings(documents: list[dict]) -> list[list[str]]:
    """cdk-nag's own IAM5 findings on each policy document, each in a managed policy of its
    own in a scratch app."""
    stack = Stack(App(), "Scratch")
    policies = [
        iam.CfnManagedPolicy(stack, f"Policy{index}", policy_document=document)
        for index, document in enumerate(documents)
    ]
    findings: dict[str, list[str]] = {policy.node.path: [] for policy in policies}
    prefix = f"{WILDCARD_RULE}["
    for violation in AwsSolutionsChecks().validate_scope(stack).violations:
        if violation.rule_name.startswith(prefix):
            detail = violation.rule_name.removeprefix(prefix).removesuffix("]")
            for resource in violation.violating_resources:
                findings[resource.construct_path].append(detail)
    return [findings[policy.node.path] for policy in policies]


def test_the_findings_on_every_shipped_policy_are_cdk_nags(each_env):
    documents = [
        resource["Properties"]["PolicyDocument"]
        for template_file in each_env.template_files
        for resource in json.loads(template_file.read_text())["Resources"].values()
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    ]
    assert any(wildcard_findings(document) for document in documents)
    # cdk-nag groups findings by rule, so compare each policy's as a set.
    assert [set(wildcard_findings(d)) for d in documents] == [
        set(found) for found in cdk_nag_wildcard_findings(documents)
    ]


def reader_role(stack: Stack, *, actions: tuple[str, ...] = ("s3:GetObject*",)) -> iam.Role:
    """A role that reads everything under the data/ prefix of a bucket of `stack`."""
    bucket = s3.Bucket(stack, "Bucket")
    role = iam.Role(stack, "Reader", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    role.add_to_policy(
        iam.PolicyStatement(actions=list(actions), resources=[bucket.arn_for_objects("data/*")])
    )
    return role


def data_prefix_finding(stack: Stack) -> str:
    bucket = stack.node.find_child("Bucket").node.default_child
    return f"AwsSolutions-IAM5[Resource::<{stack.get_logical_id(bucket)}.Arn>/data/*]"


def acknowledged(policy: iam.CfnPolicy | iam.CfnManagedPolicy) -> dict[str, str]:
    """The rules acknowledged on `policy` (once the app is synthesized), each once."""
    found: dict[str, str] = {}
    for entry in policy.node.metadata:
        if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
            for qualified_rule, reason in entry.data.items():
                rule = qualified_rule.split("::", 1)[1]
                assert rule not in found, f"acknowledged twice: {rule}"
                found[rule] = reason
    return found


def acknowledged_after_synth(role: iam.Role) -> dict[str, str]:
    Stack.of(role).node.root.synth()
    return acknowledged(role.node.find_child("DefaultPolicy").node.default_child)


@pytest.fixture
def stack(tmp_path) -> Stack:
    app = App(context=CDK_CONTEXT, outdir=str(tmp_path))
    return Stack(app, "Bare", env=ENV)


def test_a_matching_finding_is_acknowledged_with_its_patterns_reason(stack):
    role = reader_role(stack)
    acknowledge_wildcard_grants(
        role, {r"Action::s3:GetObject\*": ACTION_REASON, r"Resource::.*/data/\*": READ_REASON}
    )
    assert acknowledged_after_synth(role) == {
        "AwsSolutions-IAM5[Action::s3:GetObject*]": ACTION_REASON,
        data_prefix_finding(stack): READ_REASON,
    }


def test_a_pattern_must_match_the_whole_finding(stack):
    role = reader_role(stack)
    acknowledge_wildcard_grants(
        role, {r"Resource::.*/data": READ_REASON, r"Action::s3:GetObject\*": ACTION_REASON}
    )
    assert acknowledged_after_synth(role) == {
        "AwsSolutions-IAM5[Action::s3:GetObject*]": ACTION_REASON
    }


def test_the_first_matching_pattern_gives_the_reason(stack):
    role = reader_role(stack)
    acknowledge_wildcard_grants(role, {r"Resource::.*/data/\*": READ_REASON})
    acknowledge_wildcard_grants(role, {r"Resource::.*": "Any resource at all, said second."})
    assert acknowledged_after_synth(role) == {data_prefix_finding(stack): READ_REASON}


def test_expectations_for_one_scope_share_one_aspect(stack):
    role = reader_role(stack)
    acknowledge_wildcard_grants(role, {r"Resource::.*/data/\*": READ_REASON})
    acknowledge_wildcard_grants(role, {r"Action::s3:GetObject\*": ACTION_REASON})
    aspects = [a for a in Aspects.of(role).all if isinstance(a, AcknowledgeWildcardGrants)]
    assert len(aspects) == 1
    assert acknowledged_after_synth(role) == {
        "AwsSolutions-IAM5[Action::s3:GetObject*]": ACTION_REASON,
        data_prefix_finding(stack): READ_REASON,
    }


def test_grants_made_after_the_expectation_are_acknowledged(stack):
    bucket = s3.Bucket(stack, "Bucket")
    policy = iam.ManagedPolicy(stack, "Readers")
    acknowledge_wildcard_grants(policy, {r"Resource::.*/data/\*": READ_REASON})
    policy.add_statements(
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects("data/*")])
    )
    stack.node.root.synth()
    assert acknowledged(policy.node.default_child) == {data_prefix_finding(stack): READ_REASON}


def nagged_reader(tmp_path, *, actions: tuple[str, ...]) -> App:
    """An app with cdk-nag whose one role may read `example`'s data/ prefix with `actions`,
    the Get wildcard and the prefix expected."""
    app = App(context=CDK_CONTEXT, outdir=str(tmp_path))
    role = iam.Role(
        Stack(app, "Bare", env=ENV),
        "Reader",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
    )
    role.add_to_policy(
        iam.PolicyStatement(actions=list(actions), resources=["arn:aws:s3:::example/data/*"])
    )
    acknowledge_wildcard_grants(
        role, {r"Action::s3:GetObject\*": ACTION_REASON, r"Resource::.*/data/\*": READ_REASON}
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


def test_expected_wildcards_pass_cdk_nag(tmp_path):
    nagged_reader(tmp_path, actions=("s3:GetObject*",)).synth()


def test_an_unexpected_wildcard_still_fails_synth(tmp_path):
    app = nagged_reader(tmp_path, actions=("s3:GetObject*", "s3:List*"))
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = (tmp_path / "validation-report.json").read_text()
    assert "AwsSolutions-IAM5[Action::s3:List*]" in report
    assert "AwsSolutions-IAM5[Action::s3:GetObject*]" not in report
    assert "AwsSolutions-IAM5[Resource::" not in report
