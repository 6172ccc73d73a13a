"""The platform's signal bus: named signals (Maestro's signal triggers) and their publisher."""

from __future__ import annotations

import json

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk_constructs.base import skip_checkov
from cdk_constructs.function import PlatformFunction

SIGNAL_SOURCE = "ml-platform.signals"


class SignalBus(Construct):
    """An EventBridge bus for declared signals, the function that publishes them, and the
    rules that start work on them.

    Secure defaults:
    - signals are declared with the parameters each must carry; the publisher validates a
      signal against that declaration and is idempotent on the caller's key (Powertools
      idempotency on a DynamoDB table with point-in-time recovery and a TTL);
    - the publisher may put events on this bus only, and use only the table calls Powertools
      makes; the bus's policy refuses PutEvents from every other principal, so no caller can
      skip the publisher's validation and idempotency;
    - a rule can only be made for a declared signal with all of its required parameters.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bus_name: str,
        signals: dict[str, list[str]],
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.signals = signals
        self.bus = events.EventBus(self, "Bus", event_bus_name=bus_name)
        idempotency = dynamodb.TableV2(
            self,
            "Idempotency",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="expiration",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # Only in-flight idempotency records: safe to lose with the stack.
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.publisher = PlatformFunction(
            self,
            "Publisher",
            handler_name="signal_publisher",
            description="Publishes named workflow signals to the signal bus",
            environment={
                "EVENT_BUS_NAME": self.bus.event_bus_name,
                "SIGNALS": json.dumps(signals, sort_keys=True),
                "IDEMPOTENCY_TABLE": idempotency.table_name,
            },
            log_retention_days=log_retention_days,
        )
        skip_checkov(
            self.publisher.function,
            "CKV_AWS_116",
            "Callers invoke it synchronously and read its answer (the event id or why the signal "
            "was refused); a dead-letter queue only catches asynchronous invocations.",
        )
        self.bus.grant_put_events_to(self.publisher.function)
        # Any other caller of this account would skip the publisher's validation and
        # idempotency: the bus itself refuses everyone but the publisher. (The CDK's own
        # EventBusPolicy reads a deprecated property and prints a warning at synth.)
        self.bus.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlyThePublisherPutsSignals",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["events:PutEvents"],
                resources=[self.bus.event_bus_arn],
                conditions={
                    "ArnNotEquals": {"aws:PrincipalArn": self.publisher.function.role.role_arn}
                },
            )
        )
        idempotency.grant(
            self.publisher.function,
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        )

    def on_signal(
        self,
        scope: Construct,
        construct_id: str,
        *,
        signal: str,
        params: dict[str, str],
        description: str,
        target: events.IRuleTarget,
    ) -> events.Rule:
        """A rule on this bus that sends `signal` with exactly these parameter values to
        `target`; refuses undeclared signals and triggers missing a required parameter."""
        if signal not in self.signals:
            raise ValueError(
                f"signal {signal!r} is not declared; declared: {', '.join(sorted(self.signals))}"
            )
        missing = sorted(set(self.signals[signal]) - set(params))
        if missing:
            raise ValueError(f"a trigger on signal {signal!r} lacks required params {missing}")
        return events.Rule(
            scope,
            construct_id,
            description=description,
            event_bus=self.bus,
            event_pattern=events.EventPattern(
                source=[SIGNAL_SOURCE],
                detail_type=[signal],
                detail={"params": {key: [value] for key, value in params.items()}},
            ),
            targets=[target],
        )
