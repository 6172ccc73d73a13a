"""What every diagram container shares: its identity tags and how it acknowledges findings."""

from __future__ import annotations

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
from cdk_nag import AwsSolutionsChecks
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


@jsii.implements(IAspect)
class AcknowledgeWildcardGrants:
    """Acknowledges the IAM5 (wildcard) findings of a role's policies that match an expected
    pattern, each with the reason given for its pattern; any other finding still fails synth.

    cdk-nag needs one acknowledgment per finding, and a finding's id embeds the resolved ARN
    (`AwsSolutions-IAM5[Resource::<Bucket.Arn>/prefix/*]`), which is only known once the
    templates resolve. This aspect asks the pack for the findings at synth time, after every
    grant has been made, instead of hard-coding token strings.
    """

    def __init__(self, expected: dict[str, str]) -> None:
        self._expected = [(re.compile(pattern), reason) for pattern, reason in expected.items()]

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, (iam.CfnPolicy, iam.CfnManagedPolicy)):
            return
        report = AwsSolutionsChecks().validate_scope(node)
        for violation in report.violations:
            finding = violation.rule_name
            if not finding.startswith("AwsSolutions-IAM5["):
                continue
            detail = finding.removeprefix("AwsSolutions-IAM5[").removesuffix("]")
            for pattern, reason in self._expected:
                if pattern.fullmatch(detail):
                    acknowledge(node, finding, reason)
                    break


def acknowledge_wildcard_grants(scope: IConstruct, expected: dict[str, str]) -> None:
    """Expect wildcard findings on the policies in `scope` (a role or a managed policy):
    {regex of the finding detail: reason}."""
    Aspects.of(scope).add(AcknowledgeWildcardGrants(expected))
