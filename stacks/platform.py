"""Composes the platform's stacks for one environment."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import App, Environment, Tags, Validations
from cdk_nag import AwsSolutionsChecks

from cdk_constructs.base import ENV_TAG
from cdk_constructs.monitoring import Overview, dashboard_areas, platform_alarm_names
from platform_config import PlatformConfig
from stacks.alerts_stack import AlertsStack
from stacks.data_stack import DataStack
from stacks.metaflow_stack import MetaflowStack
from stacks.network_stack import NetworkStack
from stacks.orchestration_stack import OrchestrationStack
from stacks.processing_stack import ProcessingStack
from stacks.serving_stack import ModelServicesStack, ServingStack, model_groups, model_stack_name
from stacks.streaming_stack import StreamingStack


@dataclass(frozen=True)
class Platform:
    alerts: AlertsStack
    network: NetworkStack
    data: DataStack
    streaming: StreamingStack
    processing: ProcessingStack
    metaflow: MetaflowStack
    orchestration: OrchestrationStack
    serving: ServingStack | None
    model_services: tuple[ModelServicesStack, ...]

    @property
    def stacks(self) -> list:
        return [
            self.alerts,
            self.network,
            self.data,
            self.streaming,
            self.processing,
            self.metaflow,
            self.orchestration,
            *([self.serving] if self.serving else []),
            *self.model_services,
        ]


# How every App of the platform is made (app.py, the tests, tools): cfn-lint checks both
# environments' templates in the tests (tests/test_cfn_lint.py), so the CDK's own
# CloudFormation validation, which only warns and costs about 2 s of every synthesis, is off.
# cdk-nag runs at every synthesis regardless (build_platform adds it).
APP_OPTIONS = {"builtin_cloud_formation_validation": False}


def build_platform(app: App, config: PlatformConfig) -> Platform:
    """Adds every stack of the environment to `app` and registers the cdk-nag checks.

    Synthesis (app.synth()) then fails on any unacknowledged AwsSolutions finding.
    """
    env = Environment(account=config.account, region=config.region)
    prefix = config.resource_prefix

    def stack_props(name: str) -> dict:
        return {"stack_name": f"{prefix}-{name}", "env": env}

    alerts = AlertsStack(app, f"{prefix}-alerts", config=config, **stack_props("alerts"))
    network = NetworkStack(app, f"{prefix}-network", config=config, **stack_props("network"))
    data = DataStack(app, f"{prefix}-data", config=config, **stack_props("data"))
    streaming = StreamingStack(
        app,
        f"{prefix}-streaming",
        config=config,
        network=network,
        data=data,
        **stack_props("streaming"),
    )
    processing = ProcessingStack(
        app,
        f"{prefix}-processing",
        config=config,
        network=network,
        data=data,
        streaming=streaming,
        **stack_props("processing"),
    )
    metaflow = MetaflowStack(
        app,
        f"{prefix}-metaflow",
        config=config,
        network=network,
        data=data,
        **stack_props("metaflow"),
    )
    orchestration = OrchestrationStack(
        app,
        f"{prefix}-orchestration",
        config=config,
        network=network,
        data=data,
        processing=processing,
        **stack_props("orchestration"),
    )
    serving, model_services = None, []
    if config.serving.models:
        serving = ServingStack(
            app,
            f"{prefix}-serving",
            config=config,
            network=network,
            data=data,
            **stack_props("serving"),
        )
        first_priority = 1
        for index, models in enumerate(model_groups(config)):
            name = model_stack_name(config, index)
            model_services.append(
                ModelServicesStack(
                    app,
                    name,
                    config=config,
                    models=models,
                    first_priority=first_priority,
                    network=network,
                    data=data,
                    serving=serving,
                    stack_name=name,
                    env=env,
                )
            )
            first_priority += len(models)
    # Stacks that alarm or publish failures import the alert topic by name.
    for stack in (
        data,
        processing,
        metaflow,
        orchestration,
        *([serving] if serving else []),
        *model_services,
    ):
        stack.add_stack_dependency(alerts)
    platform = Platform(
        alerts=alerts,
        network=network,
        data=data,
        streaming=streaming,
        processing=processing,
        metaflow=metaflow,
        orchestration=orchestration,
        serving=serving,
        model_services=tuple(model_services),
    )

    # Last, so it lists the alarms of every stack above.
    Overview(
        alerts,
        "Overview",
        name_prefix=prefix,
        alarm_names=platform_alarm_names(app, prefix),
        areas=dashboard_areas(app, prefix),
    )

    Tags.of(app).add(ENV_TAG, config.env_name)
    for key, value in config.tags.items():
        Tags.of(app).add(key, value)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return platform
