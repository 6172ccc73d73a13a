"""A Python Lambda function from `lambda/<name>/`, with Powertools bundled from this venv."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, Duration, ILocalBundling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct, IConstruct

from cdk_constructs.base import acknowledge, log_retention, skip_checkov

LAMBDA_ROOT = Path(__file__).resolve().parent.parent / "lambda"

# Pure-Python packages the handlers import beyond the runtime's boto3. They are copied from
# the environment the tests ran in, so the deployed code is exactly the tested code.
_BUNDLED_PACKAGES = ("aws_lambda_powertools", "typing_extensions")
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


@jsii.implements(ILocalBundling)
class _CopyWithDependencies:
    """Bundles on the local machine: synth needs neither Docker nor the network."""

    def __init__(self, source: Path) -> None:
        self._source = source

    def try_bundle(self, output_dir: str, _options: object) -> bool:
        target = Path(output_dir)
        shutil.copytree(self._source, target, dirs_exist_ok=True, ignore=_IGNORED)
        for package in _BUNDLED_PACKAGES:
            origin = Path(importlib.util.find_spec(package).origin)
            if origin.name == "__init__.py":
                shutil.copytree(
                    origin.parent, target / package, dirs_exist_ok=True, ignore=_IGNORED
                )
            else:
                shutil.copy2(origin, target / origin.name)
        return True


def handler_code(name: str) -> lambda_.Code:
    source = LAMBDA_ROOT / name
    if not (source / "handler.py").is_file():
        raise ValueError(f"no Lambda handler at {source}/handler.py")
    return lambda_.Code.from_asset(
        str(source),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            # Never pulled: local bundling always succeeds.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.14"),
            local=_CopyWithDependencies(source),
        ),
    )


class PlatformFunction(Construct):
    """Lambda function for a handler in `lambda/<name>/handler.py`.

    Secure defaults: the latest Python runtime on ARM, its own log group with retention, a
    bounded timeout, (when given a VPC) private subnets only, (when given one) a dead-letter
    queue for asynchronous invocations that fail, (when given one) a log group encrypted with
    `log_key`, and a role that starts with nothing but writing its logs: callers grant the
    rest. A caller without a dead-letter queue says why, with `skip_checkov(..., "CKV_AWS_116")`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler_name: str,
        description: str,
        environment: dict[str, str],
        log_retention_days: int,
        timeout: Duration | None = None,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: list[ec2.ISecurityGroup] | None = None,
        dead_letter_queue: sqs.IQueue | None = None,
        log_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention(log_retention_days), encryption_key=log_key
        )
        if log_key is None:
            skip_checkov(
                self.log_group,
                "CKV_AWS_158",
                "Holds only the handler's Powertools lines (ids, counts, errors), no platform "
                "data; CloudWatch Logs encrypts it at rest with its service key.",
            )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler="handler.handler",
            code=handler_code(handler_name),
            description=description,
            environment={"POWERTOOLS_SERVICE_NAME": handler_name, **environment},
            timeout=timeout or Duration.seconds(30),
            memory_size=256,
            log_group=self.log_group,
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=security_groups,
            dead_letter_queue=dead_letter_queue,
        )
        self._explain_checkov_findings(in_vpc=vpc is not None)
        role = self.function.role
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            "AWS's basic execution policy only lets the function write its own CloudWatch "
            "log streams.",
        )
        if vpc is not None:
            acknowledge(
                role,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSLambdaVPCAccessExecutionRole]",
                "AWS's VPC access policy only manages the network interfaces the function "
                "needs in its private subnets.",
            )

    def _explain_checkov_findings(self, *, in_vpc: bool) -> None:
        skip_checkov(
            self.function,
            "CKV_AWS_115",
            "A reservation comes out of the account's shared pool, of which Lambda keeps 100 "
            "unreserved (new accounts have 10 in all), so the platform could not deploy there.",
        )
        skip_checkov(
            self.function,
            "CKV_AWS_173",
            "The environment holds resource names, ARNs and settings, never a secret (those stay "
            "in Secrets Manager); Lambda encrypts it at rest with its service key.",
        )
        if not in_vpc:
            skip_checkov(
                self.function,
                "CKV_AWS_117",
                "Calls only AWS service APIs, nothing inside the VPC; attaching it would add "
                "network interfaces and an interface endpoint per service it calls.",
            )


def skip_checkov_for_deploy_handler(handler: IConstruct, *, what: str) -> None:
    """Explain checkov's Lambda findings on a handler the CDK creates for a custom resource
    (`what` it does), which only CloudFormation invokes, while it deploys the stack."""
    skip_checkov(
        handler,
        "CKV_AWS_115",
        f"The CDK's handler that {what} runs only while CloudFormation deploys the stack; a "
        "reservation would take from the account's shared pool.",
    )
    skip_checkov(
        handler,
        "CKV_AWS_116",
        f"CloudFormation invokes the CDK's handler that {what} and fails the deployment on its "
        "error; a dead-letter queue would keep an event nothing replays.",
    )
    skip_checkov(
        handler,
        "CKV_AWS_117",
        f"The CDK's handler that {what} calls only AWS service APIs and reaches nothing inside "
        "the VPC.",
    )


def encrypt_deploy_handler_logs(handler: IConstruct, key: kms.IKey) -> None:
    """Encrypt with `key` (which must admit CloudWatch Logs) the log group the CDK gives one of
    its handlers, where cdk.json's flag for CDK-managed log groups makes one."""
    log_group = handler.node.try_find_child("LogGroup")
    if log_group is not None:
        log_group.node.default_child.kms_key_id = key.key_arn
