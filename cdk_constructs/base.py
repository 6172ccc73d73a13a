"""What every diagram container shares: its identity tags and how it acknowledges findings."""

from __future__ import annotations

import typing
from typing import ClassVar

from aws_cdk import Acknowledgment, RemovalPolicy, Tags, Validations
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
