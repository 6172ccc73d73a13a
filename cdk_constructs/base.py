"""What every diagram container shares: its identity tags and how it acknowledges findings."""

from __future__ import annotations

import json
import re
import typing
from typing import ClassVar

import jsii
from aws_cdk import (
    Acknowledgment,
    Aspects,
    CfnResource,
    IAspect,
    RemovalPolicy,
    Stack,
    Tags,
    Validations,
)
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from platform_config.model import LogRetentionDays

CONTAINER_TAG = "ml-platform:container"
STEREOTYPE_TAG = "ml-platform:stereotype"
ENV_TAG = "ml-platform:env"


class PlatformContainer(Construct):
    """One container of the C4 diagram.

    Subclasses name their `container` and `stereotype`; the constructor tags every taggable
    resource below the construct with both, so no construct tags resources by hand.
    """

    container: ClassVar[str]
    stereotype: ClassVar[str]

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        Tags.of(self).add(CONTAINER_TAG, self.container)
        Tags.of(self).add(STEREOTYPE_TAG, self.stereotype)


def acknowledge(scope: IConstruct, rule_id: str, reason: str) -> None:
    """Accept a cdk-nag finding on `scope`; the reason must name the specific cause."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def skip_checkov(resource: IConstruct, check_id: str, reason: str) -> None:
    """Accept a checkov finding on `resource` (a CloudFormation resource or the construct whose
    default child it is); the one-line reason must name the specific cause.

    checkov reads skips from the resource's `Metadata.checkov.skip`; this adds one to those
    already there (replacing one for the same check, so a stack singleton that several
    constructs explain is skipped once) and leaves the CDK's own metadata in place.
    """
    cfn = resource if isinstance(resource, CfnResource) else resource.node.default_child
    skips = [
        skip
        for skip in (cfn.get_metadata("checkov") or {}).get("skip", [])
        if skip["id"] != check_id
    ]
    cfn.add_metadata("checkov", {"skip": [*skips, {"id": check_id, "comment": reason}]})


def grant_key_use_for_aws_resources(key: kms.IKey, grantee: iam.IGrantable) -> None:
    """Let `grantee` describe `key` and create grants on it only for AWS resources (an EBS
    volume, a training job): the grants a service makes on its behalf, never one for a
    principal of its choosing."""
    key.grant(grantee, "kms:DescribeKey")
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["kms:CreateGrant"],
            resources=[key.key_arn],
            conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
        )
    )


def sync_integration_statement(scope: IConstruct, rule_name: str) -> iam.PolicyStatement:
    """What a state machine needs for a `.sync` service integration beyond the service's own
    calls: Step Functions watches the job through the managed EventBridge rule `rule_name`."""
    return iam.PolicyStatement(
        actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
        resources=[
            Stack.of(scope).format_arn(service="events", resource="rule", resource_name=rule_name)
        ],
    )


def stateful_removal_policy(*, protect: bool) -> RemovalPolicy:
    return RemovalPolicy.RETAIN if protect else RemovalPolicy.DESTROY


# RetentionDays lists CloudWatch's allowed periods in ascending order, as the config does.
_RETENTION_BY_DAYS = dict(
    zip(
        typing.get_args(LogRetentionDays),
        [member for member in logs.RetentionDays if member is not logs.RetentionDays.INFINITE],
        strict=True,
    )
)


def log_retention(days: int) -> logs.RetentionDays:
    """The RetentionDays member for a period the config model has already validated."""
    return _RETENTION_BY_DAYS[days]


WILDCARD_RULE = "AwsSolutions-IAM5"


def flatten_cfn_reference(value: object) -> str:
    """A resolved policy value as cdk-nag's IAM5 rule writes it into a finding id: `${X}` of
    Fn::Sub as `<X>`, Fn::Join joined, Fn::GetAtt as `<Resource.Attribute>`, Ref as
    `<Resource>`, anything else as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("${", "<").replace("}", ">")
    if isinstance(value, dict):
        if "Fn::Join" in value:
            delimiter, items = value["Fn::Join"]
            return delimiter.join(flatten_cfn_reference(item) for item in items)
        if "Fn::Sub" in value:
            return flatten_cfn_reference(value["Fn::Sub"])
        if "Fn::GetAtt" in value:
            resource, attribute = value["Fn::GetAtt"]
            return f"<{flatten_cfn_reference(resource)}.{flatten_cfn_reference(attribute)}>"
        if "Fn::ImportValue" in value:
            return flatten_cfn_reference(value["Fn::ImportValue"])
        if "Ref" in value:
            return f"<{flatten_cfn_reference(value['Ref'])}>"
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else [value]


def wildcard_findings(policy_document: dict) -> list[str]:
    """The details of the IAM5 findings cdk-nag reports on a resolved policy document, in its
    order: statement by statement, `Action::<action>` for each allowed action with a wildcard,
    then `Resource::<flattened resource>` for each resource with one; each detail once."""
    details: dict[str, None] = {}
    for statement in policy_document.get("Statement", []):
        if statement.get("Effect") != "Allow":
            continue
        for action in _as_list(statement.get("Action")):
            if isinstance(action, str) and "*" in action:
                details[f"Action::{action}"] = None
        for resource in _as_list(statement.get("Resource")):
            flattened = flatten_cfn_reference(resource)
            if "*" in flattened:
                details[f"Resource::{flattened}"] = None
    return list(details)


@jsii.implements(IAspect)
class AcknowledgeWildcardGrants:
    """Acknowledges the IAM5 (wildcard) findings of a role's policies that match an expected
    pattern, each with the reason given for its pattern; any other finding still fails synth.

    cdk-nag needs one acknowledgment per finding, and a finding's id embeds the resolved ARN
    (`AwsSolutions-IAM5[Resource::<Bucket.Arn>/prefix/*]`), which is only known once the
    templates resolve. This aspect resolves each policy at synth time, after every grant has
    been made, and derives the findings as cdk-nag's rule does (`wildcard_findings`), rather
    than hard-coding token strings or running the whole pack once per policy. Should the two
    ever disagree, the finding cdk-nag reports stays unacknowledged and fails synth.
    """

    def __init__(self, expected: dict[str, str]) -> None:
        self._expected: list[tuple[re.Pattern[str], str]] = []
        self.expect(expected)

    def expect(self, expected: dict[str, str]) -> None:
        """Add patterns after those already expected, which keep precedence."""
        self._expected += [(re.compile(pattern), reason) for pattern, reason in expected.items()]

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, (iam.CfnPolicy, iam.CfnManagedPolicy)):
            return
        document = Stack.of(node).resolve(node.policy_document)
        acknowledgments = [
            Acknowledgment(id=f"{WILDCARD_RULE}[{detail}]", reason=reason)
            for detail in wildcard_findings(document)
            if (reason := self._reason_for(detail)) is not None
        ]
        if acknowledgments:
            Validations.of(node).acknowledge(*acknowledgments)

    def _reason_for(self, detail: str) -> str | None:
        """The reason of the first pattern that matches the whole finding `detail`."""
        return next(
            (reason for pattern, reason in self._expected if pattern.fullmatch(detail)), None
        )


def acknowledge_wildcard_grants(scope: IConstruct, expected: dict[str, str]) -> None:
    """Expect wildcard findings on the policies in `scope` (a role or a managed policy):
    {regex of the finding detail: reason}.

    Expectations given for the same scope more than once (a stack's singleton, explained by
    each construct that uses it) join its one aspect, so each finding is acknowledged once,
    with the reason of the first pattern to match it.
    """
    aspects = Aspects.of(scope)
    registered = next((a for a in aspects.all if isinstance(a, AcknowledgeWildcardGrants)), None)
    if registered is None:
        aspects.add(AcknowledgeWildcardGrants(expected))
    else:
        registered.expect(expected)
