"""The typed model of one platform environment.

Every value a stack or construct uses comes from here, validated before any construct is
built. Field docstrings double as the config reference in README.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from platform_config.instance_types import (
    BATCH_GPU_INSTANCE_TYPES,
    EMR_INSTANCE_TYPES,
    MSK_BROKER_TYPES,
    MSK_BURSTABLE_TYPES,
    RDS_INSTANCE_TYPES,
    SAGEMAKER_CPU_TRAINING_TYPES,
    SAGEMAKER_GPU_TRAINING_TYPES,
    SAGEMAKER_TRAINING_GPUS,
    check_instance_type,
)

# CloudWatch Logs accepts only these retention periods (days).
LogRetentionDays = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
]  # fmt: skip

# Interface endpoints the platform's private subnets may need, by their endpoint service name
# suffix (com.amazonaws.<region>.<name>). Gateway endpoints for S3 and DynamoDB are always there.
InterfaceEndpointName = Literal[
    "ecr.api", "ecr.dkr", "logs", "monitoring", "sts", "kms", "secretsmanager", "ssm", "glue",
    "elasticmapreduce", "kafka", "cassandra", "sagemaker.api", "sagemaker.runtime",
    "sagemaker.featurestore-runtime", "states", "events", "batch",
]  # fmt: skip

Days = Annotated[int, Field(ge=1, le=3650)]

REPO_ROOT = Path(__file__).resolve().parent.parent


class StrictModel(BaseModel):
    """No unknown keys, no silent type coercion, immutable once loaded."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NetworkConfig(StrictModel):
    cidr: str = "10.0.0.0/16"
    """IPv4 range of the VPC, a /16 to /20 network address."""
    nat_gateways: int = Field(default=1, ge=1, le=3)
    """NAT gateways for egress from private subnets (1 is cheap, one per AZ is resilient)."""
    interface_endpoints: list[InterfaceEndpointName] = Field(default_factory=list)
    """Interface VPC endpoints to create, so AWS API traffic stays inside the VPC."""
    flow_log_retention_days: LogRetentionDays = 30
    """Retention of the VPC flow log group."""

    @field_validator("cidr")
    @classmethod
    def _cidr_is_a_network(cls, value: str) -> str:
        try:
            network = ipaddress.IPv4Network(value, strict=True)
        except ValueError as error:
            raise ValueError(f"not an IPv4 network address ({error}); e.g. 10.0.0.0/16") from None
        if not 16 <= network.prefixlen <= 20:
            raise ValueError("prefix length must be between /16 and /20")
        if not network.is_private:
            raise ValueError("must be a private (RFC 1918) range")
        return value

    @field_validator("interface_endpoints")
    @classmethod
    def _endpoints_unique(cls, value: list[str]) -> list[str]:
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"listed more than once: {', '.join(duplicates)}")
        return value


class DataLakeConfig(StrictModel):
    raw_to_intelligent_tiering_days: int = Field(default=30, ge=0, le=3650)
    """Days after which raw-zone objects move to S3 Intelligent-Tiering (0: at once)."""
    noncurrent_version_expiration_days: Days = 30
    """Days a replaced or deleted object version is kept before it expires."""
    access_log_retention_days: Days = 90
    """Days S3 server access logs are kept in the logs bucket."""


class CatalogConfig(StrictModel):
    manage_catalog_encryption: bool = False
    """Encrypt the account's Glue Data Catalog with the platform key. The setting is one per
    account and region: enable it in exactly one environment of an account."""


class OnlineStoreConfig(StrictModel):
    prediction_ttl_days: Days = 7
    """Time to live of rows in the predictions table; stale recommendations expire."""


SchemaCompatibility = Literal[
    "NONE", "BACKWARD", "BACKWARD_ALL", "FORWARD", "FORWARD_ALL", "FULL", "FULL_ALL"
]


def _schema_exists(value: str) -> str:
    if not (REPO_ROOT / value).is_file():
        raise ValueError("no such file in the repository")
    return value


AvroSchemaFile = Annotated[
    str,
    Field(pattern=r"^schemas/avro/[a-z0-9_]+\.avsc$"),
    AfterValidator(_schema_exists),
]


class KafkaTopicConfig(StrictModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9._-]{1,249}$")
    """Topic name; also the name of its schema in the registry."""
    partitions: int = Field(ge=1, le=1000)
    retention_hours: int = Field(default=168, ge=1, le=8760)
    schema_file: AvroSchemaFile
    """Avro schema of the topic's values, relative to the repository root."""
    previous_schema_files: list[AvroSchemaFile] = Field(default_factory=list)
    """Earlier versions of the schema, oldest first. The registry's schema is created with the
    oldest and every later file becomes a schema version: CloudFormation cannot edit a
    registered definition in place, so a change to the schema is a new file appended here."""
    schema_compatibility: SchemaCompatibility = "BACKWARD"
    """How the registry checks a new schema version against the previous ones."""

    @model_validator(mode="after")
    def _versions_distinct(self) -> KafkaTopicConfig:
        files = [*self.previous_schema_files, self.schema_file]
        if len(set(files)) != len(files):
            raise FieldError(
                ("previous_schema_files",),
                self.previous_schema_files,
                "each version is its own file, and the current schema_file is not among them",
            )
        return self

    @property
    def schema_definition(self) -> str:
        """The current schema, which producers and the streaming job validate against."""
        return (REPO_ROOT / self.schema_file).read_text(encoding="utf-8")

    @property
    def schema_versions(self) -> list[str]:
        """Every registered definition, oldest first; the last is the current one."""
        files = [*self.previous_schema_files, self.schema_file]
        return [(REPO_ROOT / name).read_text(encoding="utf-8") for name in files]


class KafkaConfig(StrictModel):
    kafka_version: Literal["3.8.x", "3.9.x"] = "3.9.x"
    broker_instance_type: str = "kafka.m7g.large"
    """An MSK broker type, e.g. kafka.t3.small or kafka.m7g.large."""
    brokers_per_zone: int = Field(default=1, ge=1, le=10)
    ebs_volume_gib: int = Field(default=100, ge=1, le=16384)
    storage_autoscaling_max_gib: int | None = Field(default=None, ge=2, le=16384)
    """Upper bound of broker storage auto-scaling; empty turns it off."""
    monitoring_level: Literal[
        "DEFAULT", "PER_BROKER", "PER_TOPIC_PER_BROKER", "PER_TOPIC_PER_PARTITION"
    ] = "DEFAULT"
    replication_factor: int = Field(default=3, ge=1, le=3)
    min_insync_replicas: int = Field(default=2, ge=1, le=3)
    log_retention_days: LogRetentionDays = 30
    """Retention of the broker log group."""
    producer_cidrs: list[str] = Field(default_factory=list)
    """Private networks (e.g. the streaming platform's VPC) allowed to reach the brokers."""
    topics: list[KafkaTopicConfig] = Field(min_length=1)

    @field_validator("broker_instance_type")
    @classmethod
    def _broker_type(cls, value: str) -> str:
        return check_instance_type(value, MSK_BROKER_TYPES, "Amazon MSK")

    @field_validator("producer_cidrs")
    @classmethod
    def _producer_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                network = ipaddress.IPv4Network(cidr, strict=True)
            except ValueError as error:
                raise ValueError(f"{cidr!r} is not an IPv4 network address ({error})") from None
            if not network.is_private:
                raise ValueError(f"{cidr!r} is not a private range: brokers are never public")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConfig:
        # With min ISR equal to RF, one broker down (a patch, a failure) blocks every acks=all
        # producer; one replica of headroom keeps the topic writable.
        if self.replication_factor > 1 and self.min_insync_replicas >= self.replication_factor:
            raise FieldError(
                ("min_insync_replicas",),
                self.min_insync_replicas,
                f"must be lower than replication_factor ({self.replication_factor}), so one "
                "broker can be down without blocking acks=all producers",
            )
        if self.replication_factor == 1 and self.min_insync_replicas > 1:
            raise FieldError(
                ("min_insync_replicas",),
                self.min_insync_replicas,
                "must be 1 with replication_factor 1",
            )
        if self.storage_autoscaling_max_gib is not None:
            if self.broker_instance_type in MSK_BURSTABLE_TYPES:
                raise FieldError(
                    ("storage_autoscaling_max_gib",),
                    self.storage_autoscaling_max_gib,
                    f"{self.broker_instance_type} brokers do not support storage auto-scaling; "
                    "leave it empty or use an m5/m7g broker type",
                )
            if self.storage_autoscaling_max_gib <= self.ebs_volume_gib:
                raise FieldError(
                    ("storage_autoscaling_max_gib",),
                    self.storage_autoscaling_max_gib,
                    f"must be larger than ebs_volume_gib ({self.ebs_volume_gib})",
                )
        names = [topic.name for topic in self.topics]
        if len(set(names)) != len(names):
            raise FieldError(("topics",), names, "topic names must be distinct")
        return self


def _emr_type(value: str) -> str:
    return check_instance_type(value, EMR_INSTANCE_TYPES, "Amazon EMR")


class EmrClusterConfig(StrictModel):
    release_label: str = Field(default="emr-7.13.0", pattern=r"^emr-7\.\d+\.\d+$")
    """An Amazon EMR 7.x release label."""
    primary_instance_type: str = "m7g.xlarge"
    core_instance_type: str = "m7g.xlarge"
    core_instance_count: int = Field(default=1, ge=1, le=100)
    task_instance_types: list[str] = Field(default_factory=list, max_length=5)
    """Instance types of the task fleet (empty: no task fleet)."""
    task_use_spot: bool = True
    """Task nodes on spot capacity, falling back to on-demand when spot is not available."""
    max_capacity_units: int = Field(default=4, ge=1, le=1000)
    """Managed scaling's upper bound, in instance fleet units (1 unit per instance)."""
    idle_timeout_minutes: int | None = Field(default=None, ge=1, le=10080)
    """Terminate the cluster after this long without work; empty keeps it running."""
    ebs_volume_gib: int = Field(default=64, ge=32, le=2048)

    @field_validator("primary_instance_type", "core_instance_type")
    @classmethod
    def _node_type(cls, value: str) -> str:
        return _emr_type(value)

    @field_validator("task_instance_types")
    @classmethod
    def _task_types(cls, value: list[str]) -> list[str]:
        for name in value:
            _emr_type(name)
        return value

    @model_validator(mode="after")
    def _capacity(self) -> EmrClusterConfig:
        if self.max_capacity_units < self.core_instance_count:
            raise FieldError(
                ("max_capacity_units",),
                self.max_capacity_units,
                f"must be at least core_instance_count ({self.core_instance_count})",
            )
        return self


class BatchQueueConfig(StrictModel):
    max_vcpus: int = Field(default=64, ge=1, le=10000)
    spot: bool = True
    """Spot capacity (Fargate Spot for CPU, EC2 spot for GPU) instead of on-demand."""


class GpuQueueConfig(BatchQueueConfig):
    instance_types: list[str] = Field(min_length=1, max_length=10)
    """EC2 GPU instance types for @batch(gpu=N) steps, e.g. g5.xlarge."""

    @field_validator("instance_types")
    @classmethod
    def _gpu_types(cls, value: list[str]) -> list[str]:
        for name in value:
            check_instance_type(name, BATCH_GPU_INSTANCE_TYPES, "AWS Batch GPU jobs")
        return value


ApiGatewayMode = Literal["disabled", "private", "public"]

# A release tag, optionally with the digest of the image it names: `repo:v1.2.3@sha256:<hex>`.
METADATA_IMAGE_PATTERN = r"^[a-z0-9./_-]+:v?\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?$"


def _ipv4_networks(value: list[str], *, private_only: bool) -> list[str]:
    """Each entry an IPv4 network address; `private_only` also refuses non-private ranges,
    and every entry refuses the whole address space."""
    for cidr in value:
        try:
            network = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as error:
            raise ValueError(f"{cidr!r} is not an IPv4 network address ({error})") from None
        if network.prefixlen == 0:
            raise ValueError(f"{cidr!r} admits every address")
        if private_only and not network.is_private:
            raise ValueError(f"{cidr!r} is not a private range")
    return value


class MetaflowConfig(StrictModel):
    metadata_service_image: str = Field(
        default="netflixoss/metaflow_metadata_service:v2.5.0", pattern=METADATA_IMAGE_PATTERN
    )
    """Upstream metadata service image, pinned to a release tag (never latest); append the
    image's digest (`repo:tag@sha256:<64 hex>`) so ECS pulls exactly that image even if the
    tag is moved."""
    service_cpu: Literal[256, 512, 1024, 2048, 4096] = 512
    service_memory_mib: int = Field(default=1024, ge=512, le=30720)
    min_tasks: int = Field(default=1, ge=1, le=20)
    max_tasks: int = Field(default=2, ge=1, le=50)
    api_gateway: ApiGatewayMode = "private"
    """API Gateway in front of the service (REST, API key required on every call, which
    Metaflow sends as METAFLOW_SERVICE_AUTH_KEY) for clients that are not Batch jobs:
    `private` reaches it only through an `execute-api` VPC endpoint of the VPC; `public` from
    the internet, but only from `api_allowed_cidrs` and behind a WAF web ACL; `disabled`
    leaves only the load balancer. Batch jobs always use the load balancer."""
    api_allowed_cidrs: list[str] = Field(default_factory=list)
    """With `public` only, and required there: the source networks the API admits (its
    resource policy denies every other address)."""
    api_rate_limit_per_5min: int = Field(default=3000, ge=100, le=2_000_000_000)
    """With `public`: requests one source address may make in 5 minutes before the web ACL
    blocks it."""
    client_cidrs: list[str] = Field(default_factory=list)
    """Private networks (VPN, peered VPCs) allowed to reach the metadata load balancer (and,
    with `private`, the API's VPC endpoint); Batch jobs are admitted by their security group."""
    db_instance_type: str = "t4g.micro"
    """RDS PostgreSQL instance class without the db. prefix."""
    db_allocated_storage_gib: int = Field(default=20, ge=20, le=1000)
    db_multi_az: bool = False
    db_backup_retention_days: int = Field(default=7, ge=1, le=35)
    log_retention_days: LogRetentionDays = 30
    cpu_queue: BatchQueueConfig = Field(default_factory=BatchQueueConfig)
    gpu_queue: GpuQueueConfig

    @field_validator("db_instance_type")
    @classmethod
    def _db_type(cls, value: str) -> str:
        return check_instance_type(value, RDS_INSTANCE_TYPES, "RDS PostgreSQL")

    @field_validator("api_allowed_cidrs")
    @classmethod
    def _api_sources(cls, value: list[str]) -> list[str]:
        return _ipv4_networks(value, private_only=False)

    @field_validator("client_cidrs")
    @classmethod
    def _client_networks(cls, value: list[str]) -> list[str]:
        return _ipv4_networks(value, private_only=True)

    @model_validator(mode="after")
    def _consistent(self) -> MetaflowConfig:
        if self.max_tasks < self.min_tasks:
            raise FieldError(
                ("max_tasks",), self.max_tasks, f"must be at least min_tasks ({self.min_tasks})"
            )
        if self.api_gateway == "public" and not self.api_allowed_cidrs:
            raise FieldError(
                ("api_allowed_cidrs",),
                self.api_allowed_cidrs,
                "a public API needs at least one source network; it admits no other address",
            )
        if self.api_gateway != "public" and self.api_allowed_cidrs:
            raise FieldError(
                ("api_allowed_cidrs",),
                self.api_allowed_cidrs,
                f"only applies to api_gateway: public (not {self.api_gateway})",
            )
        return self


class OrchestratorConfig(StrictModel):
    timezone: str = "UTC"
    """IANA time zone of the time triggers, e.g. America/Los_Angeles."""
    train_recommender_cron: str = Field(default="0 3 * * ? *", pattern=r"^\S+ \S+ \S+ \S+ \S+ \S+$")
    """EventBridge Scheduler cron (minutes hours day-of-month month day-of-week year)."""
    min_raw_objects: int = Field(default=1, ge=0)
    """Quality gate: fewest raw-zone objects a day needs before features are built."""
    max_dead_letter_ratio: float = Field(default=0.05, ge=0, le=1)
    """Quality gate: highest share of dead-lettered events a day may have."""
    workflow_timeout_minutes: int = Field(default=720, ge=5, le=10080)
    """Longest a workflow run may take before it stops as TIMED_OUT (and notifies)."""
    emr_step_timeout_minutes: int = Field(default=180, ge=5, le=10080)
    """Longest one EMR step of a workflow may run; on time-out Step Functions cancels the
    step, so a hung job cannot block the cluster's later runs."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone, e.g. UTC or America/Los_Angeles") from None
        return value


class TrainingConfig(StrictModel):
    instance_type: str = "ml.g5.xlarge"
    """A SageMaker GPU training instance type, e.g. ml.g5.xlarge or ml.p4d.24xlarge."""
    instance_count: int = Field(default=1, ge=1, le=64)
    """Hosts of one training job. Every GPU of every host runs one data-parallel process."""
    volume_gib: int = Field(default=50, ge=1, le=16384)
    max_runtime_minutes: int = Field(default=120, ge=5, le=40320)
    use_spot: bool = True
    """Managed spot training, resuming from checkpoints in the artifacts bucket."""
    max_wait_minutes: int | None = Field(default=240, ge=5, le=40320)
    """Longest a spot job may wait for capacity plus run; at least max_runtime_minutes."""
    image_uri: str | None = None
    """Training image; empty: the AWS PyTorch deep-learning image for the stack's region."""
    network_isolation: bool = False
    """Cut the training container off the network. Needs an image_uri with the script's
    packages baked in: the deep-learning image installs requirements.txt at start-up."""
    dlc_image_tag: str = Field(
        default="2.6.0-gpu-py312-cu126-ubuntu22.04-sagemaker",
        pattern=r"^\d+\.\d+\.\d+-gpu-py3\d+-cu\d+-ubuntu\d+\.\d+-sagemaker$",
    )
    """Tag of the PyTorch training deep-learning container used when image_uri is empty."""
    inference_dlc_image_tag: str = Field(
        default="2.6.0-gpu-py312-cu124-ubuntu22.04-sagemaker",
        pattern=r"^\d+\.\d+\.\d+-(gpu|cpu)-py3\d+(-cu\d+)?-ubuntu\d+\.\d+-sagemaker$",
    )
    """Tag of the PyTorch inference container recorded with each registered model version."""
    epochs: int = Field(default=20, ge=1, le=1000)
    embedding_dim: int = Field(default=64, ge=4, le=1024)
    batch_size: int = Field(default=1024, ge=1, le=1_048_576)
    """Training pairs per optimizer step over all GPUs of the job, split evenly between them;
    at least one per GPU, so that no paid GPU sits idle."""
    approval_metric_floor: float = Field(default=0.05, ge=0, le=1)
    """recall@k a new model version needs (and must beat the approved one) to be approved."""

    @field_validator("instance_type")
    @classmethod
    def _gpu_training_type(cls, value: str) -> str:
        if value in SAGEMAKER_CPU_TRAINING_TYPES:
            raise ValueError(
                "a CPU instance type; the training service runs on GPU types such as "
                "ml.g5.xlarge, ml.g6.xlarge or ml.p4d.24xlarge"
            )
        return check_instance_type(value, SAGEMAKER_GPU_TRAINING_TYPES, "SageMaker GPU training")

    @model_validator(mode="after")
    def _every_gpu_trains(self) -> TrainingConfig:
        # The job runs one process per GPU of every host, each taking an equal share of every
        # step's pairs; with fewer pairs than GPUs some would get none and sit idle, so the
        # training script refuses to start such a job, and the config refuses it first.
        gpus = self.instance_count * SAGEMAKER_TRAINING_GPUS[self.instance_type]
        if self.batch_size < gpus:
            raise FieldError(
                ("batch_size",),
                self.batch_size,
                f"fewer pairs per step than the {gpus} GPUs of {self.instance_count} x "
                f"{self.instance_type}; each GPU takes an equal share and needs at least one",
            )
        return self

    @model_validator(mode="after")
    def _spot_wait(self) -> TrainingConfig:
        if self.network_isolation and self.image_uri is None:
            raise FieldError(
                ("network_isolation",),
                True,
                "needs image_uri: the deep-learning image installs the training "
                "requirements at start-up, which an isolated container cannot download",
            )
        if self.use_spot:
            if self.max_wait_minutes is None:
                raise FieldError(
                    ("max_wait_minutes",), None, "required with use_spot (at least max_runtime)"
                )
            if self.max_wait_minutes < self.max_runtime_minutes:
                raise FieldError(
                    ("max_wait_minutes",),
                    self.max_wait_minutes,
                    f"must be at least max_runtime_minutes ({self.max_runtime_minutes})",
                )
        return self


class AlertsConfig(StrictModel):
    emails: list[str] = Field(default_factory=list)
    """Who is told: e-mail subscribers of the platform's alert topic (every alarm, every failed,
    timed-out or aborted workflow run). A protected environment needs at least one."""

    @field_validator("emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for address in value:
            if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
                raise ValueError(f"{address!r} is not an e-mail address")
        if len(set(value)) != len(value):
            raise ValueError("listed more than once")
        return value


class EmrTlsConfig(StrictModel):
    certificates: Literal["generated", "provided"] = "generated"
    """`generated`: the deploy creates a self-signed certificate for the region's internal
    domain and writes the zip EMR's in-transit encryption reads. `provided`: you put your own
    zip at the same key of the artifacts bucket before the processing stack deploys."""
    validity_days: int = Field(default=825, ge=30, le=3650)
    """Validity of a generated certificate; a new one is made when this changes."""


class CanaryConfig(StrictModel):
    """How a new model version rolls out: ECS-native canary with automated canary analysis."""

    step_percent: float = Field(default=10.0, ge=0.1, le=100)
    """Share of production traffic the new version gets first."""
    step_bake_minutes: int = Field(default=10, ge=1, le=1440)
    """How long the canary share runs before the rest of the traffic shifts."""
    bake_minutes: int = Field(default=10, ge=0, le=1440)
    """How long the old version stays ready for an instant rollback after the full shift
    (set it: the service default for canary deployments is 36 hours)."""
    analysis_minutes: int = Field(default=8, ge=1, le=1440)
    """Window the judge compares canary against baseline over; at most step_bake_minutes."""
    min_samples: int = Field(default=5, ge=3, le=1440)
    """Per-minute samples each metric needs from each group before the judge decides."""
    max_wait_minutes: int = Field(default=30, ge=1, le=1440)
    """Too little data after this long fails the canary (fail safe)."""
    confidence: float = Field(default=0.98, gt=0.5, lt=1)
    tolerance: float = Field(default=0.25, ge=0, le=10)
    """Allowed difference as a multiple of |Hodges-Lehmann estimate|, as Kayenta's judge."""
    pass_threshold: float = Field(default=75, ge=0, le=100)
    marginal_threshold: float = Field(default=50, ge=0, le=100)
    marginal_is_failure: bool = True
    """A marginal score rolls back (nobody is watching to decide otherwise)."""
    alarm_5xx_percent: float = Field(default=1.0, gt=0, le=100)
    """Rollback alarm: target 5xx responses above this share of requests."""
    alarm_p99_latency_ms: int = Field(default=250, ge=1, le=60000)
    """Rollback alarm: p99 target response time above this."""

    @model_validator(mode="after")
    def _consistent(self) -> CanaryConfig:
        if self.marginal_threshold > self.pass_threshold:
            raise FieldError(
                ("marginal_threshold",),
                self.marginal_threshold,
                f"must be at most pass_threshold ({self.pass_threshold})",
            )
        if self.analysis_minutes > self.step_bake_minutes:
            raise FieldError(
                ("analysis_minutes",),
                self.analysis_minutes,
                f"must fit in step_bake_minutes ({self.step_bake_minutes}): the judge decides "
                "while the canary share runs",
            )
        if self.max_wait_minutes < self.analysis_minutes + 2:
            raise FieldError(
                ("max_wait_minutes",),
                self.max_wait_minutes,
                f"must leave the judge at least 2 minutes beyond analysis_minutes "
                f"({self.analysis_minutes})",
            )
        if self.min_samples > self.analysis_minutes:
            raise FieldError(
                ("min_samples",),
                self.min_samples,
                f"one sample per minute: at most analysis_minutes ({self.analysis_minutes})",
            )
        return self


class ServedModelConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
    """A model of the registry (its package group is ml-platform-<env>-<name>)."""
    cpu: Literal[256, 512, 1024, 2048, 4096] = 1024
    memory_mib: int = Field(default=2048, ge=512, le=30720)
    min_tasks: int = Field(default=2, ge=1, le=100)
    max_tasks: int = Field(default=6, ge=1, le=500)
    target_cpu_percent: int = Field(default=60, ge=10, le=90)
    target_requests_per_task: int = Field(default=1000, ge=10, le=100000)
    """Scale out above this many requests per task per minute."""
    shadow_fraction: float = Field(default=0.0, ge=0, le=1)
    """Share of requests also scored by the candidate version set on the model's stack
    (shadow mode); its answers are recorded, never returned."""

    @model_validator(mode="after")
    def _bounds(self) -> ServedModelConfig:
        if self.max_tasks < self.min_tasks:
            raise FieldError(
                ("max_tasks",), self.max_tasks, f"must be at least min_tasks ({self.min_tasks})"
            )
        return self


class ServingConfig(StrictModel):
    models: list[ServedModelConfig] = Field(default_factory=list)
    """One ECS service per model behind one load balancer; empty: no serving stack."""
    internal: bool = True
    """An internal load balancer (reached from the VPC and connected networks)."""
    certificate_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$"
    )
    """ACM certificate: an HTTPS listener. Empty: an HTTP listener open only to allowed_cidrs."""
    allowed_cidrs: list[str] = Field(default_factory=list)
    """Networks allowed to call the models (the VPC's own range is always allowed)."""
    models_per_stack: int = Field(default=12, ge=1, le=15)
    """Model services per CloudFormation stack: a model adds about 26 resources and 43 kB, so
    at most 15 keeps a stack under 80 % of CloudFormation's 500-resource limit."""
    log_retention_days: LogRetentionDays = 30
    canary: CanaryConfig = Field(default_factory=CanaryConfig)

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                network = ipaddress.IPv4Network(cidr, strict=True)
            except ValueError as error:
                raise ValueError(f"{cidr!r} is not an IPv4 network address ({error})") from None
            if network.prefixlen == 0:
                raise ValueError(f"{cidr!r} opens the models to every address")
        return value

    @model_validator(mode="after")
    def _models(self) -> ServingConfig:
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise FieldError(("models",), names, "model names must be distinct")
        if not self.internal and self.certificate_arn is None:
            raise FieldError(
                ("certificate_arn",),
                None,
                "an internet-facing load balancer needs HTTPS: set certificate_arn",
            )
        return self


class FeatureStoreConfig(StrictModel):
    max_feature_age_hours: int = Field(default=36, ge=1, le=720)
    """Freshness alarm: the newest member-feature record may be at most this old."""


class ModelMonitoringConfig(StrictModel):
    """The model monitor: a Spark job the orchestrator runs on a schedule, whose figures
    (namespace MLPlatform/ModelMonitoring) the drift and accuracy alarms read."""

    cron: str = Field(default="15 * * * ? *", pattern=r"^\S+ \S+ \S+ \S+ \S+ \S+$")
    """When the monitor runs (EventBridge Scheduler cron, in the orchestrator's timezone);
    the alarms expect one figure per hour."""
    window_hours: int = Field(default=24, ge=1, le=168)
    """Recent serving inputs and scores compared with the training baseline."""
    outcome_hours: int = Field(default=24, ge=1, le=168)
    """A recommendation is a hit when the member plays one of its titles within this time."""
    plays_lag_hours: int = Field(default=30, ge=0, le=168)
    """How far the curated plays lag behind the clock: the daily ETL writes a day's plays in
    the early hours of the next, so recommendations are judged only once their plays can be
    there (judging earlier would read missing plays as misses)."""
    top_k: int = Field(default=10, ge=1, le=100)
    """K of the online hit rate at K."""
    feature_drift_psi: float = Field(default=0.2, gt=0, le=10)
    """Data-drift alarm: the population stability index of an input above this (0.1 is a
    moderate shift, 0.25 a major one, by the usual rule of thumb)."""
    prediction_drift_psi: float = Field(default=0.2, gt=0, le=10)
    """Prediction-drift alarm: the PSI of the top score above this."""
    min_hit_rate: float = Field(default=0.01, ge=0, le=1)
    """Online-accuracy alarm: the hit rate at K of the served version below this."""
    drift_sustained_hours: int = Field(default=6, ge=1, le=24)
    """A drift alarm fires, and asks the orchestrator to retrain, only when drift lasts this
    many consecutive hourly figures: a short burst of unusual traffic retrains nothing."""


class ExperimentationConfig(StrictModel):
    """ABlaze: when its analysis runs (it can also be asked for with the
    `analysis-requested` signal)."""

    analysis_cron: str = Field(default="0 6 * * ? *", pattern=r"^\S+ \S+ \S+ \S+ \S+ \S+$")
    """EventBridge Scheduler cron, in the orchestrator's timezone: after the daily ETL has
    curated the previous day's plays."""


class MonitoringConfig(StrictModel):
    """Thresholds of the infrastructure alarms (sensible defaults; per environment in its
    config file) and the Prometheus and Grafana switches."""

    msk_disk_used_percent: float = Field(default=80, gt=0, lt=100)
    """A broker's data-log volume fuller than this."""
    flink_consumer_lag: int = Field(default=100_000, ge=1)
    """Records the streaming job's consumer group may fall behind (max offset lag)."""
    spark_idle_hours: int = Field(default=4, ge=1, le=72)
    """Cost alarm: the Spark cluster has run no step for this long."""
    lambda_errors: int = Field(default=0, ge=0)
    """A function alarms when it has more errors than this in five minutes."""
    p99_latency_ms: int = Field(default=1000, ge=10, le=60000)
    """The metadata service's p99 response time above this."""
    rds_cpu_percent: float = Field(default=80, gt=0, le=100)
    rds_free_storage_gib: float = Field(default=2, gt=0)
    rds_max_connections: int = Field(default=60, ge=1)
    """The metadata database's connections above this (t4g.micro allows about 80)."""
    prometheus: bool = True
    """An Amazon Managed Service for Prometheus workspace that the serving tasks' collector
    writes to, with alert rules for serving."""
    grafana: bool = False
    """An Amazon Managed Grafana workspace over Prometheus and CloudWatch. Off by default: it
    signs users in through IAM Identity Center, which must be enabled in the account first."""
    otel_collector_image: str = Field(
        default=(
            "public.ecr.aws/aws-observability/aws-otel-collector:v0.48.0"
            "@sha256:9b28046359054b414f4ba76056ba4e8cffda2d53fbcee06171d7eeecd71326c3"
        ),
        pattern=r"^[a-z0-9.-]+(/[a-z0-9._-]+)+(:[A-Za-z0-9._-]+)?(@sha256:[0-9a-f]{64})?$",
    )
    """The AWS Distro for OpenTelemetry collector beside each serving task, pinned by digest
    so a re-pushed tag cannot change what runs next to the model."""
    models: ModelMonitoringConfig = Field(default_factory=ModelMonitoringConfig)


class PlatformConfig(StrictModel):
    env_name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,14}[a-z0-9]$")
    """Short environment name (2-16 lowercase letters, digits, dashes); part of every name."""
    account: str | None = Field(default=None, pattern=r"^\d{12}$")
    """12-digit AWS account; when empty the stacks deploy to the account of the credentials."""
    region: str = Field(pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
    """AWS region, e.g. us-east-1."""
    availability_zones: list[str] = Field(min_length=2, max_length=3)
    """Availability zones of the region, named so synth never looks them up."""
    protect_stateful_resources: bool
    """True: stateful resources are retained on delete, stateful stacks have termination
    protection and deletion protection is on where the service has it. False: they are
    destroyed with their stack (buckets emptied first)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Extra tags for every resource (owner, cost centre); the ml-platform: keys are reserved."""
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    data_lake: DataLakeConfig = Field(default_factory=DataLakeConfig)
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    online_store: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)
    kafka: KafkaConfig
    flink: EmrClusterConfig
    spark: EmrClusterConfig
    metaflow: MetaflowConfig
    orchestrator: OrchestratorConfig = Field(default_factory=OrchestratorConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    feature_store: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    emr_tls: EmrTlsConfig = Field(default_factory=EmrTlsConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    experimentation: ExperimentationConfig = Field(default_factory=ExperimentationConfig)

    @field_validator("availability_zones")
    @classmethod
    def _zones_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("availability zones must be distinct")
        return value

    @field_validator("tags")
    @classmethod
    def _tags_not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith(("ml-platform:", "aws:")) or not 1 <= len(key) <= 128:
                raise ValueError(
                    f"tag key {key!r} is not allowed: 1-128 characters, not starting with "
                    "'ml-platform:' or 'aws:'"
                )
        return value

    @model_validator(mode="after")
    def _zones_in_region(self) -> PlatformConfig:
        zone = re.compile(rf"^{re.escape(self.region)}[a-z]$")
        for index, name in enumerate(self.availability_zones):
            if not zone.match(name):
                raise FieldError(
                    ("availability_zones", index),
                    name,
                    f"must be a zone of region {self.region}, e.g. {self.region}a",
                )
        brokers = self.kafka.brokers_per_zone * len(self.availability_zones)
        if self.kafka.replication_factor > brokers:
            raise FieldError(
                ("kafka", "replication_factor"),
                self.kafka.replication_factor,
                f"at most the number of brokers ({brokers})",
            )
        if self.protect_stateful_resources and not self.alerts.emails:
            raise FieldError(
                ("alerts", "emails"),
                [],
                "a protected environment needs at least one subscriber, or failures and "
                "alarms reach no one",
            )
        if self.network.nat_gateways > len(self.availability_zones):
            raise FieldError(
                ("network", "nat_gateways"),
                self.network.nat_gateways,
                f"at most one per availability zone ({len(self.availability_zones)})",
            )
        return self

    @property
    def resource_prefix(self) -> str:
        """Prefix of named resources: `ml-platform-<env>`."""
        return f"ml-platform-{self.env_name}"

    @property
    def bucket_prefix(self) -> str:
        """Short prefix of bucket names, which are global and at most 63 characters."""
        return f"mlp-{self.env_name}"

    @property
    def snake_prefix(self) -> str:
        """Prefix for services that allow only letters, digits and underscores."""
        return f"ml_platform_{self.env_name.replace('-', '_')}"


class FieldError(ValueError):
    """A cross-field check that names the field it is about, not the model it runs on."""

    def __init__(self, location: tuple[str | int, ...], value: object, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.value = value
        self.message = message
