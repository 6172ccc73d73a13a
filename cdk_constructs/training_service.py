"""Model Training Service container: SageMaker GPU training launched by workflows."""

from __future__ import annotations

import gzip
import io
import tarfile
import tempfile
from pathlib import Path

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge_wildcard_grants,
    grant_key_use_for_aws_resources,
    skip_checkov,
    sync_integration_statement,
)
from cdk_constructs.function import PlatformFunction
from platform_config.model import TrainingConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING_CODE = REPO_ROOT / "training" / "recommender"
MODELS_PREFIX = "models/"

# AWS Deep Learning Containers live in one account per region; most regions share the first.
_DLC_ACCOUNT_DEFAULT = "763104351884"
_DLC_ACCOUNTS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
}

# What the training script prints (METRIC name=value) and SageMaker turns into metrics.
METRIC_NAMES = (
    "train_loss",
    "recall_at_k",
    "ndcg_at_k",
    "popularity_recall_at_k",
    "popularity_ndcg_at_k",
)
DECISIVE_METRIC = "recall_at_k"
# Makes the PyTorch training container start the script with torchrun, one process per GPU
# of every host (what the SageMaker Python SDK sends for distribution={"torch_distributed":
# {"enabled": True}}).
TORCH_DISTRIBUTED_HYPERPARAMETER = "sagemaker_torch_distributed_enabled"
# Slack beyond the job's own stopping condition before the workflow gives up on the state.
_STATE_TIMEOUT_MARGIN_SECONDS = 30 * 60


def dlc_image(region: str, repository: str, tag: str) -> str:
    """URI of an AWS deep-learning container image in `region` (no credentials needed)."""
    account = _DLC_ACCOUNTS.get(region, _DLC_ACCOUNT_DEFAULT)
    return f"{account}.dkr.ecr.{region}.amazonaws.com/{repository}:{tag}"


def ecr_account_and_repository(image_uri: str) -> tuple[str, str]:
    """The registry account and repository of an ECR image URI, tagged (`repo:tag`), pinned
    by digest (`repo@sha256:...`) or both (`repo:tag@sha256:...`)."""
    registry, separator, reference = image_uri.partition("/")
    if not separator or ".dkr.ecr." not in registry:
        raise ValueError(f"not an ECR image URI (<account>.dkr.ecr.<region>...): {image_uri!r}")
    # The digest's own colon (sha256:...) must not be taken for a tag's.
    repository = reference.partition("@")[0].partition(":")[0]
    return registry.partition(".")[0], repository


def source_tarball(source: Path, target_dir: Path) -> Path:
    """A reproducible sourcedir.tar.gz of `source` (SageMaker script mode wants a tarball;
    sorted entries and zeroed times keep the asset hash stable between synths)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(source.rglob("*")):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            info = archive.gettarinfo(str(path), arcname=str(path.relative_to(source)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with path.open("rb") as handle:
                archive.addfile(info, handle)
    target = target_dir / "sourcedir.tar.gz"
    with target.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
        zipped.write(buffer.getvalue())
    return target


class TrainingService(PlatformContainer):
    """Runs the recommender's training on SageMaker GPU instances and registers its versions.

    Each job trains data-parallel on every GPU of `instance_count` hosts: the container starts
    the script under torchrun with one process per GPU.

    Secure defaults:
    - training in the private compute subnets behind an outbound-only security group; a
      multi-host job's hosts also accept traffic from each other (the group itself), which
      torchrun and NCCL need;
      network isolation when the image carries its own packages (config `network_isolation`
      with `image_uri`: the deep-learning image installs the script's requirements first);
    - volumes, output and checkpoints encrypted with the platform key;
    - a role that reads only the curated interactions and features, writes only its models
      prefix of the artifacts bucket, and pulls only the training image's repository;
    - managed spot with checkpoints where configured, and hard limits on runtime and wait;
    - metric definitions, so each job's recall/NDCG land in CloudWatch and the registry.
    """

    container = "training"
    stereotype = "model-training"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: TrainingConfig,
        name_prefix: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        curated_bucket: s3.IBucket,
        artifacts_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        input_prefixes: dict[str, str],
        model_package_group: str,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self._config = config
        self._name_prefix = name_prefix
        self._curated = curated_bucket
        self._artifacts = artifacts_bucket
        self._key = encryption_key
        self._input_prefixes = input_prefixes
        self._model_package_group = model_package_group
        self._vpc = vpc
        self._subnets = subnets
        self.image_uri = config.image_uri or dlc_image(
            stack.region, "pytorch-training", config.dlc_image_tag
        )
        # The serving image recorded with each registered version.
        self.inference_image_uri = dlc_image(
            stack.region, "pytorch-inference", config.inference_dlc_image_tag
        )

        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="Recommender training jobs",
        )
        for prefix in input_prefixes.values():
            curated_bucket.grant_read(self.role, f"{prefix}*")
        self.output_prefix = f"{MODELS_PREFIX}{name_prefix}-recommender/"
        artifacts_bucket.grant_read_write(self.role, f"{self.output_prefix}*")
        encryption_key.grant_encrypt_decrypt(self.role)
        grant_key_use_for_aws_resources(encryption_key, self.role)
        account, repository = ecr_account_and_repository(self.image_uri)
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ecr:BatchGetImage",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchCheckLayerAvailability",
                ],
                resources=[
                    f"arn:{stack.partition}:ecr:{stack.region}:{account}:repository/{repository}"
                ],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                # Authorization tokens and the describe calls take no resource.
                actions=[
                    "ecr:GetAuthorizationToken",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeVpcs",
                    "ec2:DescribeDhcpOptions",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                ],
                resources=["*"],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents", "logs:CreateLogGroup"],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="/aws/sagemaker/TrainingJobs:*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )

        staging = Path(tempfile.mkdtemp(prefix="training-code-"))
        self.code = s3_assets.Asset(self, "Code", path=str(source_tarball(TRAINING_CODE, staging)))
        self.code.grant_read(self.role)

        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            # One description whatever the host count: changing it replaces the group.
            description="Recommender training jobs: outbound, and between the hosts of a job",
            allow_all_outbound=True,
        )
        if config.instance_count > 1:
            # torchrun's rendezvous, gloo and NCCL open connections between the hosts on
            # ports of their choosing; EFA, where the instance type has it, needs all traffic.
            self.security_group.add_ingress_rule(
                self.security_group,
                ec2.Port.all_traffic(),
                "Between the hosts of one training job",
            )

        self._grant_network_interfaces(vpc, subnets)

        self.register_function = PlatformFunction(
            self,
            "Register",
            handler_name="model_registration",
            description="Registers a trained model version with its metrics and approval",
            environment={},
            log_retention_days=log_retention_days,
            timeout=Duration.minutes(2),
        ).function
        skip_checkov(
            self.register_function,
            "CKV_AWS_116",
            "Only the training workflow's task invokes it, synchronously, and retries or fails "
            "the run on its error; a dead-letter queue catches only async invocations.",
        )
        groups = stack.format_arn(
            service="sagemaker", resource="model-package-group", resource_name=model_package_group
        )
        packages = stack.format_arn(
            service="sagemaker", resource="model-package", resource_name=f"{model_package_group}/*"
        )
        self.register_function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["sagemaker:DescribeTrainingJob"],
                resources=[
                    stack.format_arn(
                        service="sagemaker",
                        resource="training-job",
                        resource_name=f"{name_prefix}-recommender-*",
                    )
                ],
            )
        )
        self.register_function.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateModelPackage",
                    "sagemaker:DescribeModelPackage",
                    "sagemaker:UpdateModelPackage",
                ],
                resources=[groups, packages],
            )
        )
        self.register_function.add_to_role_policy(
            iam.PolicyStatement(
                # List actions support no resource-level scoping.
                actions=["sagemaker:ListModelPackages"],
                resources=["*"],
            )
        )
        acknowledge_wildcard_grants(
            self.role,
            {
                r"Resource::\*": (
                    "ECR authorization tokens, the EC2 describe calls and PutMetricData "
                    "(limited by a namespace condition) take no resource."
                ),
                r"Action::(s3:(GetObject|GetBucket|List|Abort|DeleteObject)|"
                r"kms:(GenerateDataKey|ReEncrypt))\*": (
                    "The CDK's S3 grant groups on the training inputs, the models prefix and the "
                    "code asset, and the platform key."
                ),
                r"Resource::.*(member_interactions|features/member_features|"
                rf"{MODELS_PREFIX}.*-recommender)/\*": (
                    "Training reads the curated interactions and member features and writes "
                    "model, output and checkpoint objects under its own models prefix."
                ),
                r"Resource::arn:.*:s3:::cdk-.*-assets-.*/\*": (
                    "The training code tarball is a CDK file asset in the bootstrap bucket."
                ),
                r"Resource::arn:.*:logs:.*:log-group:/aws/sagemaker/TrainingJobs:\*": (
                    "SageMaker writes every training job's log stream into this one group."
                ),
            },
        )
        acknowledge_wildcard_grants(
            self.register_function.role,
            {
                rf"Resource::arn:.*:sagemaker:.*:training-job/{name_prefix}-recommender-\*": (
                    "Describing the recommender's training jobs, whose names carry the run."
                ),
                rf"Resource::arn:.*:sagemaker:.*:model-package/{model_package_group}/\*": (
                    "Versions of the one model package group, numbered at registration."
                ),
                r"Resource::\*": (
                    "sagemaker:ListModelPackages supports no resource-level permissions; the "
                    "handler lists only its own group."
                ),
            },
        )

    def _grant_network_interfaces(self, vpc: ec2.IVpc, subnets: ec2.SubnetSelection) -> None:
        """SageMaker creates the job's network interfaces with this role: in the compute
        subnets, with the job's security group, inside the platform's VPC only."""
        stack = Stack.of(self)

        def ec2_arn(resource: str, name: str) -> str:
            return stack.format_arn(service="ec2", resource=resource, resource_name=name)

        in_vpc = {"ArnEquals": {"ec2:Vpc": ec2_arn("vpc", vpc.vpc_id)}}
        subnet_ids = vpc.select_subnets(subnet_group_name=subnets.subnet_group_name).subnet_ids
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["ec2:CreateNetworkInterface"],
                resources=[
                    *(ec2_arn("subnet", subnet) for subnet in subnet_ids),
                    ec2_arn("security-group", self.security_group.security_group_id),
                ],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ec2:CreateNetworkInterface",
                    "ec2:CreateNetworkInterfacePermission",
                    "ec2:DeleteNetworkInterface",
                    "ec2:DeleteNetworkInterfacePermission",
                ],
                resources=[ec2_arn("network-interface", "*")],
                conditions=in_vpc,
            )
        )
        acknowledge_wildcard_grants(
            self.role,
            {
                r"Resource::arn:.*:ec2:.*:network-interface/\*": (
                    "Training jobs' network interfaces get their ids when SageMaker creates "
                    "them; a condition holds them to the platform's VPC."
                )
            },
        )

    @property
    def longest_job_seconds(self) -> int:
        """The longest a training job may take, waiting for spot capacity included."""
        config = self._config
        minutes = config.max_wait_minutes if config.use_spot else config.max_runtime_minutes
        return minutes * 60

    def training_task(
        self, scope: Construct, construct_id: str, state_name: str
    ) -> sfn.CustomState:
        """The Step Functions task that runs one training job and waits for it (.sync).

        A custom state, because the CDK's training task cannot ask for managed spot training
        or checkpoints; `grant_start_training` gives a state machine what the state needs.
        """
        config = self._config
        stack = Stack.of(self)
        job_name = (
            f"{{% '{self._name_prefix}-recommender-' & $replace($states.input.run_date, '-', '') "
            "& '-' & $substring($replace($states.context.Execution.Name, /[^A-Za-z0-9]/, ''), "
            "0, 12) %}"
        )
        stopping = {"MaxRuntimeInSeconds": config.max_runtime_minutes * 60}
        arguments = {
            "TrainingJobName": job_name,
            "RoleArn": self.role.role_arn,
            "AlgorithmSpecification": {
                "TrainingImage": self.image_uri,
                "TrainingInputMode": "File",
                "MetricDefinitions": [
                    {"Name": name, "Regex": f"METRIC {name}=([0-9.eE+-]+)"} for name in METRIC_NAMES
                ],
            },
            "HyperParameters": {
                "sagemaker_program": "train.py",
                "sagemaker_submit_directory": self.code.s3_object_url,
                # JSON true, as the SDK encodes it; on one GPU torchrun starts one process.
                TORCH_DISTRIBUTED_HYPERPARAMETER: "true",
                "epochs": str(config.epochs),
                "embedding-dim": str(config.embedding_dim),
                "batch-size": str(config.batch_size),
                "k": "10",
            },
            "InputDataConfig": [
                {
                    "ChannelName": channel,
                    "DataSource": {
                        "S3DataSource": {
                            "S3DataType": "S3Prefix",
                            "S3Uri": self._curated.s3_url_for_object(prefix),
                            "S3DataDistributionType": "FullyReplicated",
                        }
                    },
                }
                for channel, prefix in self._input_prefixes.items()
            ],
            "OutputDataConfig": {
                "S3OutputPath": self._artifacts.s3_url_for_object(f"{self.output_prefix}output"),
                "KmsKeyId": self._key.key_arn,
            },
            "ResourceConfig": {
                "InstanceCount": config.instance_count,
                "InstanceType": config.instance_type,
                "VolumeSizeInGB": config.volume_gib,
                "VolumeKmsKeyId": self._key.key_arn,
            },
            "StoppingCondition": stopping,
            "EnableNetworkIsolation": config.network_isolation,
            "EnableInterContainerTrafficEncryption": True,
            "VpcConfig": {
                "SecurityGroupIds": [self.security_group.security_group_id],
                "Subnets": self._vpc.select_subnets(
                    subnet_group_name=self._subnets.subnet_group_name
                ).subnet_ids,
            },
            "Tags": [{"Key": "ml-platform:container", "Value": self.container}],
        }
        if config.use_spot:
            arguments["EnableManagedSpotTraining"] = True
            stopping["MaxWaitTimeInSeconds"] = config.max_wait_minutes * 60
            arguments["CheckpointConfig"] = {
                "S3Uri": self._artifacts.s3_url_for_object(f"{self.output_prefix}checkpoints"),
                "LocalPath": "/opt/ml/checkpoints",
            }
        holder = Construct(scope, construct_id)
        return sfn.CustomState(
            holder,
            state_name,
            state_json={
                "Type": "Task",
                "Resource": f"arn:{stack.partition}:states:::sagemaker:createTrainingJob.sync",
                "Arguments": arguments,
                # The job's own limits stop it first; this only catches a wait that never
                # ends (Step Functions then stops the job).
                "TimeoutSeconds": self.longest_job_seconds + _STATE_TIMEOUT_MARGIN_SECONDS,
                "Output": (
                    "{% $merge([$states.input, "
                    "{'training_job_name': $states.result.TrainingJobName}]) %}"
                ),
            },
        )

    def grant_start_training(self, role: iam.IRole) -> None:
        """What a state machine needs to run `training_task` (.sync)."""
        stack = Stack.of(self)
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateTrainingJob",
                    "sagemaker:DescribeTrainingJob",
                    "sagemaker:StopTrainingJob",
                    "sagemaker:AddTags",
                ],
                resources=[
                    stack.format_arn(
                        service="sagemaker",
                        resource="training-job",
                        resource_name=f"{self._name_prefix}-recommender-*",
                    )
                ],
            )
        )
        role.add_to_principal_policy(
            sync_integration_statement(role, "StepFunctionsGetEventsForSageMakerTrainingJobsRule")
        )
        self.role.grant_pass_role(role)

    def register_task(
        self, scope: Construct, construct_id: str, state_name: str
    ) -> sfn.TaskStateBase:
        """The Step Functions task that registers the trained version (the last step)."""
        return tasks.LambdaInvoke.jsonata(
            scope,
            construct_id,
            state_name=state_name,
            lambda_function=self.register_function,
            payload=sfn.TaskInput.from_object(
                {
                    "training_job_name": "{% $states.input.training_job_name %}",
                    "model_package_group": self._model_package_group,
                    "metric": DECISIVE_METRIC,
                    "metric_floor": self._config.approval_metric_floor,
                    "code_version": self.code.asset_hash,
                    "inference_image": self.inference_image_uri,
                }
            ),
            payload_response_only=True,
            retry_on_service_exceptions=False,
            task_timeout=sfn.Timeout.duration(Duration.minutes(5)),
            outputs="{% $merge([$states.input, {'registration': $states.result}]) %}",
        )
