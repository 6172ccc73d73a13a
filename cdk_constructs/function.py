"""A Python Lambda function from `lambda/<name>/`, with Powertools from a layer that every
function of its stack shares."""

from __future__ import annotations

import importlib.util
import shutil
from importlib.metadata import version
from pathlib import Path

import jsii
from aws_cdk import (
    AssetHashType,
    BundlingOptions,
    DockerImage,
    Duration,
    ILocalBundling,
    Stack,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct, IConstruct

from cdk_constructs.base import acknowledge, log_retention, skip_checkov

LAMBDA_ROOT = Path(__file__).resolve().parent.parent / "lambda"
RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64

# What the handlers import beyond the runtime's boto3: import name -> distribution name. They
# are copied from the environment the tests ran in, so the deployed code is exactly the tested
# code; being pure Python, they run on any architecture and Python version.
LAYER_PACKAGES = {
    "aws_lambda_powertools": "aws-lambda-powertools",
    "typing_extensions": "typing_extensions",
}
# Construct id of the layer, a child of the stack.
POWERTOOLS_LAYER_ID = "PowertoolsLayer"
# Bytecode the tests leave beside the sources: never deployed, never part of an asset's hash.
_BYTECODE = ("__pycache__", "*.pyc")
# Extension modules (POSIX, Windows): compiled for this machine, not for Lambda's ARM runtime.
_COMPILED_SUFFIXES = frozenset({".so", ".pyd"})


def installed_origin(import_name: str) -> Path:
    """The file `import_name` is imported from: a module, or its package's `__init__.py`."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or spec.origin is None:
        raise ValueError(f"{import_name} is not an installed package or module")
    return Path(spec.origin)


def copy_pure_python_package(import_name: str, *, into: Path) -> None:
    """Copy the installed package or module `import_name` into the directory `into`, refusing
    one with compiled extension modules (which would not load on Lambda's ARM runtime)."""
    origin = installed_origin(import_name)
    is_package = origin.name == "__init__.py"
    files = origin.parent.rglob("*") if is_package else [origin]
    compiled = next((path for path in files if path.suffix in _COMPILED_SUFFIXES), None)
    if compiled is not None:
        raise ValueError(f"{import_name} is not pure Python: it ships {compiled}")
    if not is_package:
        into.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, into / origin.name)
        return
    shutil.copytree(
        origin.parent,
        into / import_name,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(*_BYTECODE),
    )


@jsii.implements(ILocalBundling)
class _CopyLayerPackages:
    """Builds the layer on the local machine (synth needs neither Docker nor the network), in
    the `python/` folder Lambda puts on the path of every function using the layer."""

    def try_bundle(self, output_dir: str, _options: object) -> bool:
        for import_name in LAYER_PACKAGES:
            copy_pure_python_package(import_name, into=Path(output_dir) / "python")
        return True


def _layer_code() -> lambda_.Code:
    # Named by its content (the output hash), the asset is staged once for all the stacks.
    # The bundler reads the packages from this environment, not from the source folder, which
    # is only where they are installed.
    return lambda_.Code.from_asset(
        str(installed_origin("aws_lambda_powertools").parent.parent),
        bundling=BundlingOptions(
            # Never pulled: local bundling always succeeds.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.14"),
            local=_CopyLayerPackages(),
        ),
        asset_hash_type=AssetHashType.OUTPUT,
    )


def powertools_layer(scope: IConstruct) -> lambda_.ILayerVersion:
    """The layer with Powertools that every function in `scope`'s stack uses, created by the
    first function that asks for it."""
    stack = Stack.of(scope)
    existing = stack.node.try_find_child(POWERTOOLS_LAYER_ID)
    if existing is not None:
        return existing
    packages = ", ".join(f"{name} {version(name)}" for name in LAYER_PACKAGES.values())
    return lambda_.LayerVersion(
        stack,
        POWERTOOLS_LAYER_ID,
        code=_layer_code(),
        compatible_runtimes=[RUNTIME],
        compatible_architectures=[ARCHITECTURE],
        description=f"Pure Python for the platform's functions: {packages}",
    )


def handler_code(name: str) -> lambda_.Code:
    """The code of `lambda/<name>/`: the handler's own modules only, Powertools being in the
    layer."""
    source = LAMBDA_ROOT / name
    if not (source / "handler.py").is_file():
        raise ValueError(f"no Lambda handler at {source}/handler.py")
    return lambda_.Code.from_asset(str(source), exclude=list(_BYTECODE))


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
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="handler.handler",
            code=handler_code(handler_name),
            layers=[powertools_layer(self)],
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
