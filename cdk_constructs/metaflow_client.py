"""Metaflow Client container: the AWS side of `@batch` steps and `step-functions create`."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_constructs.base import (
    PlatformContainer,
    acknowledge,
    acknowledge_wildcard_grants,
    sync_integration_statement,
)
from platform_config.model import MetaflowConfig

DATASTORE_PREFIX = "metaflow"
# Metaflow names every job definition it registers `metaflow_<sha224 of the definition>`
# (metaflow/plugins/aws/batch/batch_client.py).
JOB_DEFINITION_PREFIX = "metaflow_"
# The rule Step Functions manages for its `batch:submitJob.sync` integration.
SFN_BATCH_EVENTS_RULE = "StepFunctionsGetEventsForBatchJobsRule"
# Envelope encryption that S3 and DynamoDB perform with the data key on a caller's behalf.
DATA_KEY_ACTIONS = [
    "kms:Decrypt",
    "kms:Encrypt",
    "kms:GenerateDataKey*",
    "kms:ReEncrypt*",
    "kms:DescribeKey",
]
# Batch calls that accept no resource in a policy (Batch's service authorization reference).
BATCH_READ_ACTIONS = [
    "batch:DescribeJobs",
    "batch:ListJobs",
    "batch:DescribeJobQueues",
    "batch:DescribeComputeEnvironments",
    "batch:DescribeJobDefinitions",
]


class MetaflowClient(PlatformContainer):
    """AWS Batch compute, roles, state table and the generated client configuration.

    Secure defaults:
    - CPU (Fargate, Spot per config) and GPU (EC2 GPU types, spot per config) compute in the
      private compute subnets only, behind a security group that admits nothing (the metadata
      service admits it by name: `compute_security_group`);
    - one job role for Batch tasks that reads and writes objects under the Metaflow datastore
      prefix of the artifacts bucket and items of the state table, and nothing else; Step
      Functions, EventBridge and data-scientist permissions are scoped to this platform's
      queues, Metaflow's `metaflow_*` job definitions (non-privileged when registered), job
      ARNs, the state machine prefix and schedule rules whose targets are those state
      machines; the data key is usable only through S3 and DynamoDB (`kms:ViaService`);
      nobody here may delete a datastore object or any object version;
    - the Step Functions state table is encrypted with the platform key, with point-in-time
      recovery and TTL;
    - the client configuration is published in SSM with every required key filled, so the
      service URL is never empty.
    """

    container = "metaflow-client"
    stereotype = "workflow-sdk"

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: MetaflowConfig,
        name_prefix: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        artifacts_bucket: s3.IBucket,
        encryption_key: kms.IKey,
        service_url: str,
        internal_service_url: str,
        config_parameter_name: str,
        protect: bool,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.state_machine_prefix = f"{name_prefix}-metaflow"
        self.compute_security_group = security_group = ec2.SecurityGroup(
            self,
            "ComputeSecurityGroup",
            vpc=vpc,
            description="Metaflow Batch jobs: outbound only",
            allow_all_outbound=True,
        )

        cpu_compute = batch.FargateComputeEnvironment(
            self,
            "CpuCompute",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            spot=config.cpu_queue.spot,
            maxv_cpus=config.cpu_queue.max_vcpus,
        )
        gpu_compute = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "GpuCompute",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            instance_types=[ec2.InstanceType(name) for name in config.gpu_queue.instance_types],
            use_optimal_instance_classes=False,
            images=[batch.EcsMachineImage(image_type=batch.EcsMachineImageType.ECS_AL2023_NVIDIA)],
            spot=config.gpu_queue.spot,
            allocation_strategy=(
                batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED
                if config.gpu_queue.spot
                else batch.AllocationStrategy.BEST_FIT_PROGRESSIVE
            ),
            minv_cpus=0,
            maxv_cpus=config.gpu_queue.max_vcpus,
        )
        acknowledge(
            gpu_compute.instance_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonEC2ContainerServiceforEC2Role]",
            "AWS's ECS container-instance policy is what Batch's EC2 hosts need to register "
            "with their ECS cluster and pull job images.",
        )
        self.cpu_queue = batch.JobQueue(
            self,
            "CpuQueue",
            job_queue_name=f"{name_prefix}-metaflow-cpu",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=cpu_compute, order=1)
            ],
        )
        self.gpu_queue = batch.JobQueue(
            self,
            "GpuQueue",
            job_queue_name=f"{name_prefix}-metaflow-gpu",
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=gpu_compute, order=1)
            ],
        )

        self._artifacts_bucket = artifacts_bucket
        self._encryption_key = encryption_key
        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Metaflow @batch tasks: the datastore prefix and the state table only",
        )
        self.execution_role = iam.Role(
            self,
            "FargateExecutionRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pulls images and ships logs for Metaflow Fargate jobs",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name(
                    "service-role/AmazonECSTaskExecutionRolePolicy"
                )
            ],
        )
        acknowledge(
            self.execution_role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AmazonECSTaskExecutionRolePolicy]",
            "AWS's task execution policy only pulls container images and writes the job's "
            "log stream; it grants no data access.",
        )

        self.state_table = dynamodb.TableV2(
            self,
            "StepFunctionsState",
            partition_key=dynamodb.Attribute(name="pathspec", type=dynamodb.AttributeType.STRING),
            time_to_live_attribute="ttl",
            encryption=dynamodb.TableEncryptionV2.customer_managed_key(encryption_key),
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            deletion_protection=protect,
            removal_policy=removal_policy,
        )

        # Tasks of a flow on Step Functions record foreach splits in the state table.
        for statement in (
            *self._datastore_statements(),
            self._table_statement("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
            self._data_key_statement("s3", "dynamodb"),
        ):
            self.job_role.add_to_policy(statement)

        state_machines = self._arn("states", f"stateMachine:{self.state_machine_prefix}*")
        self.step_functions_role = iam.Role(
            self,
            "StepFunctionsRole",
            assumed_by=iam.ServicePrincipal("states.amazonaws.com"),
            description="Runs Metaflow flows deployed with step-functions create",
        )
        for statement in (
            *self._job_statements(),
            iam.PolicyStatement(actions=["batch:DescribeJobs"], resources=["*"]),
            sync_integration_statement(self, SFN_BATCH_EVENTS_RULE),
            # A foreach reads its cardinality from the state table.
            self._table_statement("dynamodb:GetItem"),
            self._data_key_statement("dynamodb"),
        ):
            self.step_functions_role.add_to_policy(statement)
        self.job_role.grant_pass_role(self.step_functions_role)
        self.execution_role.grant_pass_role(self.step_functions_role)

        self.events_role = iam.Role(
            self,
            "EventsRole",
            assumed_by=iam.ServicePrincipal("events.amazonaws.com"),
            description="Lets EventBridge schedules start Metaflow state machines",
        )
        self.events_role.add_to_policy(
            iam.PolicyStatement(actions=["states:StartExecution"], resources=[state_machines])
        )

        self.scientist_policy = self._scientist_policy(name_prefix, state_machines)

        self.client_config = {
            "METAFLOW_DEFAULT_DATASTORE": "s3",
            "METAFLOW_DATASTORE_SYSROOT_S3": artifacts_bucket.s3_url_for_object(DATASTORE_PREFIX),
            "METAFLOW_DATATOOLS_S3ROOT": artifacts_bucket.s3_url_for_object(
                f"{DATASTORE_PREFIX}/data"
            ),
            "METAFLOW_DEFAULT_METADATA": "service",
            "METAFLOW_SERVICE_URL": service_url,
            # Batch tasks run inside the VPC and always use the load balancer directly.
            "METAFLOW_SERVICE_INTERNAL_URL": internal_service_url,
            "METAFLOW_BATCH_JOB_QUEUE": self.cpu_queue.job_queue_arn,
            "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": self.job_role.role_arn,
            "METAFLOW_ECS_FARGATE_EXECUTION_ROLE": self.execution_role.role_arn,
            "METAFLOW_SFN_IAM_ROLE": self.step_functions_role.role_arn,
            "METAFLOW_SFN_STATE_MACHINE_PREFIX": self.state_machine_prefix,
            "METAFLOW_SFN_DYNAMO_DB_TABLE": self.state_table.table_name,
            "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": self.events_role.role_arn,
        }
        self.config_parameter = ssm.StringParameter(
            self,
            "ClientConfig",
            parameter_name=config_parameter_name,
            description="Metaflow client configuration (python -m tools.metaflow_config)",
            string_value=stack.to_json_string(self.client_config),
        )

        self._acknowledge_wildcards()

    def _arn(self, service: str, resource: str) -> str:
        """An ARN of this stack's region and account."""
        stack = Stack.of(self)
        return f"arn:{stack.partition}:{service}:{stack.region}:{stack.account}:{resource}"

    def _datastore_statements(self) -> list[iam.PolicyStatement]:
        """Reading and writing Metaflow's artifacts, which it never deletes: objects under the
        datastore prefix, and listing the bucket, without which S3 answers 403 instead of 404
        for a missing artifact."""
        bucket = self._artifacts_bucket
        return [
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(f"{DATASTORE_PREFIX}/*")],
            ),
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]),
        ]

    def _table_statement(self, *actions: str) -> iam.PolicyStatement:
        return iam.PolicyStatement(actions=list(actions), resources=[self.state_table.table_arn])

    def _data_key_statement(self, *services: str) -> iam.PolicyStatement:
        """The data key, only as the S3 or DynamoDB of this region use it for the caller."""
        region = Stack.of(self).region
        return iam.PolicyStatement(
            actions=DATA_KEY_ACTIONS,
            resources=[self._encryption_key.key_arn],
            conditions={
                "StringEquals": {
                    "kms:ViaService": [f"{service}.{region}.amazonaws.com" for service in services]
                }
            },
        )

    def _job_statements(self) -> list[iam.PolicyStatement]:
        """Submitting Metaflow's job definitions to this platform's two queues, and stopping
        jobs."""
        return [
            iam.PolicyStatement(
                actions=["batch:SubmitJob"],
                resources=[
                    self.cpu_queue.job_queue_arn,
                    self.gpu_queue.job_queue_arn,
                    self._arn("batch", f"job-definition/{JOB_DEFINITION_PREFIX}*"),
                ],
            ),
            iam.PolicyStatement(
                actions=["batch:TerminateJob"], resources=[self._arn("batch", "job/*")]
            ),
        ]

    def _scientist_policy(self, name_prefix: str, state_machines: str) -> iam.ManagedPolicy:
        prefix = self.state_machine_prefix
        schedule_rules = self._arn("events", f"rule/{prefix}*")
        return iam.ManagedPolicy(
            self,
            "DataScientistPolicy",
            managed_policy_name=f"{name_prefix}-metaflow-data-scientist",
            description="Run Metaflow flows on Batch and schedule them with Step Functions",
            statements=[
                *self._job_statements(),
                iam.PolicyStatement(
                    actions=["batch:RegisterJobDefinition"],
                    resources=[self._arn("batch", f"job-definition/{JOB_DEFINITION_PREFIX}*")],
                    # Metaflow leaves `privileged` out unless a step asks for it.
                    conditions={"BoolIfExists": {"batch:Privileged": "false"}},
                ),
                iam.PolicyStatement(actions=BATCH_READ_ACTIONS, resources=["*"]),
                iam.PolicyStatement(
                    actions=["logs:GetLogEvents"],
                    resources=[self._arn("logs", "log-group:/aws/batch/job:*")],
                ),
                iam.PolicyStatement(
                    actions=[
                        "states:CreateStateMachine",
                        "states:UpdateStateMachine",
                        "states:DescribeStateMachine",
                        "states:StartExecution",
                        "states:ListExecutions",
                        "states:DeleteStateMachine",
                    ],
                    resources=[state_machines],
                ),
                iam.PolicyStatement(
                    actions=["states:DescribeExecution", "states:StopExecution"],
                    resources=[self._arn("states", f"execution:{prefix}*")],
                ),
                # `step-functions create` disables the rule of a flow without @schedule.
                iam.PolicyStatement(
                    actions=[
                        "events:PutRule",
                        "events:DescribeRule",
                        "events:DisableRule",
                        "events:DeleteRule",
                        "events:RemoveTargets",
                    ],
                    resources=[schedule_rules],
                ),
                iam.PolicyStatement(
                    actions=["events:PutTargets"],
                    resources=[schedule_rules],
                    conditions={
                        "ForAllValues:ArnLike": {"events:TargetArn": [state_machines]},
                        "Null": {"events:TargetArn": "false"},
                    },
                ),
                iam.PolicyStatement(
                    actions=["iam:PassRole"],
                    resources=[
                        self.job_role.role_arn,
                        self.execution_role.role_arn,
                        self.step_functions_role.role_arn,
                        self.events_role.role_arn,
                    ],
                ),
                *self._datastore_statements(),
                self._data_key_statement("s3"),
            ],
        )

    def _acknowledge_wildcards(self) -> None:
        prefix = self.state_machine_prefix
        job_definitions = {
            rf"Resource::arn:.*:batch:.*:job-definition/{JOB_DEFINITION_PREFIX}\*": (
                "Job definitions Metaflow registers, which it names metaflow_ and the SHA-224 "
                "of their content; submission also needs one of this platform's two queues."
            ),
        }
        jobs = {
            r"Resource::arn:.*:batch:.*:job/\*": (
                "batch:TerminateJob names a job by its generated id, and a job ARN carries no "
                "queue or name to scope by: any job of this account and region."
            ),
        }
        data_key = {
            r"Action::kms:(GenerateDataKey|ReEncrypt)\*": (
                "Envelope encryption with the platform data key by the S3 or DynamoDB of this "
                "region (whichever the statement's kms:ViaService names) for the caller; no "
                "direct use of the key."
            ),
        }
        datastore = {
            rf"Resource::.*/{DATASTORE_PREFIX}/\*": (
                "Get, put and abort uploads of objects under the Metaflow datastore prefix only."
            ),
        }
        acknowledge_wildcard_grants(
            self.step_functions_role,
            {
                **job_definitions,
                **jobs,
                **data_key,
                r"Resource::\*": "batch:DescribeJobs accepts no resource.",
            },
        )
        acknowledge_wildcard_grants(
            self.events_role,
            {
                r"Resource::arn:.*:states:.*:stateMachine:.*-metaflow\*": (
                    "Metaflow names each flow's state machine under this platform's prefix at "
                    "deploy time; the wildcard covers that prefix only."
                )
            },
        )
        acknowledge_wildcard_grants(self.job_role, {**data_key, **datastore})
        acknowledge_wildcard_grants(
            self.scientist_policy,
            {
                **job_definitions,
                **jobs,
                **data_key,
                **datastore,
                r"Resource::\*": (
                    "Only Batch's describe and list calls, which accept no resource."
                ),
                r"Resource::arn:.*:logs:.*:log-group:/aws/batch/job:\*": (
                    "Reading the log streams of Batch jobs, which all share AWS Batch's log group."
                ),
                rf"Resource::arn:.*:(states:.*:(stateMachine|execution)|events:.*:rule/)"
                rf":?{prefix}\*": (
                    "State machines, executions and schedule rules that Metaflow names under "
                    "this platform's prefix when a flow is deployed; a rule's targets must be "
                    "those state machines."
                ),
            },
        )
