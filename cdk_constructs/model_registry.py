"""Model versions and their metrics: one SageMaker model package group per model."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk_constructs.base import PlatformContainer


class ModelRegistry(PlatformContainer):
    """SageMaker Model Registry groups; each version records its training job, training date,
    code version, input data and metrics, and whether it was approved and why.

    Not a container of the seed diagram, which cannot show model versions: it answers that
    limitation. Groups are retained with protected environments' stateful resources.
    """

    container = "model-registry"
    stereotype = "model-registry"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name_prefix: str,
        models: dict[str, str],
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        self.group_names: dict[str, str] = {}
        for model, description in models.items():
            name = f"{name_prefix}-{model}"
            group = sagemaker.CfnModelPackageGroup(
                self,
                f"{model.capitalize()}Group",
                model_package_group_name=name,
                model_package_group_description=description,
            )
            group.apply_removal_policy(removal_policy)
            self.group_names[model] = name
