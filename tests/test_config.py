"""Configuration: shipped environments load, and each kind of bad input gets one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from platform_config import ConfigError, PlatformConfig, load_config, shipped_environments

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_with(tmp_path: Path, override: str, env: str = "dev"):
    path = tmp_path / "mine.yaml"
    path.write_text(override)
    return load_config(env=env, override_file=path)


def error_for(tmp_path: Path, override: str, env: str = "dev") -> str:
    with pytest.raises(ConfigError) as raised:
        load_with(tmp_path, override, env)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_shipped_environments_are_dev_and_prod():
    assert shipped_environments() == ["dev", "prod"]


def test_dev_is_cheap_and_disposable():
    dev = load_config(env="dev")
    assert dev.protect_stateful_resources is False
    assert dev.network.nat_gateways == 1
    assert len(dev.availability_zones) == 2


def test_prod_is_durable_across_three_zones():
    prod = load_config(env="prod")
    assert prod.protect_stateful_resources is True
    assert prod.availability_zones == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert prod.network.nat_gateways == 3


def test_user_file_merges_over_the_chosen_env(tmp_path):
    config = load_with(tmp_path, "env_name: staging\nnetwork:\n  nat_gateways: 2\n", env="prod")
    assert config.env_name == "staging"
    assert config.network.nat_gateways == 2
    # Keys the file does not name keep the prod values, nested ones included.
    assert config.network.cidr == "10.10.0.0/16"
    assert config.protect_stateful_resources is True


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "network:\n  nat_gateway: 1\n",
            "network.nat_gateway = 1: unknown key; allowed keys here: cidr, "
            "flow_log_retention_days, interface_endpoints, nat_gateways",
        ),
        ("colour: blue\n", "colour = 'blue': unknown key; allowed keys here: account,"),
        ("network:\n  nat_gateways: two\n", "network.nat_gateways = 'two': Input should be"),
        ("protect_stateful_resources: 'yes'\n", "protect_stateful_resources = 'yes': Input"),
        ("network:\n  nat_gateways: 7\n", "network.nat_gateways = 7: Input should be less than"),
        (
            "network:\n  cidr: 10.0.0.0/33\n",
            "network.cidr = '10.0.0.0/33': not an IPv4 network address",
        ),
        ("network:\n  cidr: 10.0.0.0/8\n", "network.cidr = '10.0.0.0/8': prefix length must be"),
        ("network:\n  cidr: 10.0.0.1/16\n", "network.cidr = '10.0.0.1/16': not an IPv4 network"),
        ("network:\n  cidr: 8.8.0.0/16\n", "network.cidr = '8.8.0.0/16': must be a private"),
        (
            "network:\n  interface_endpoints: [sts, s3]\n",
            "network.interface_endpoints.1 = 's3': Input should be 'ecr.api'",
        ),
        (
            "network:\n  interface_endpoints: [sts, sts]\n",
            "network.interface_endpoints = ['sts', 'sts']: listed more than once: sts",
        ),
        (
            "network:\n  flow_log_retention_days: 10\n",
            "network.flow_log_retention_days = 10: Input should be 1, 3, 5",
        ),
        (
            "availability_zones: [us-east-1a, eu-west-1b]\n",
            "availability_zones.1 = 'eu-west-1b': must be a zone of region us-east-1",
        ),
        ("availability_zones: [us-east-1a]\n", "availability_zones = ['us-east-1a']: List should"),
        (
            "network:\n  nat_gateways: 3\n",
            "network.nat_gateways = 3: at most one per availability zone (2)",
        ),
        ("region: mars-1\n", "region = 'mars-1': String should match pattern"),
        ("account: '1234'\n", "account = '1234': String should match pattern"),
        ("env_name: Dev_1\n", "env_name = 'Dev_1': String should match pattern"),
        ("tags:\n  'ml-platform:env': x\n", "tags = {'ml-platform:env': 'x'}: tag key"),
        ("data_lake:\n  access_log_retention_days: 0\n", "data_lake.access_log_retention_days"),
        (
            "kafka:\n  broker_instance_type: m7g.large\n",
            "kafka.broker_instance_type = 'm7g.large': not an instance type Amazon MSK supports; "
            "families: kafka.m5, kafka.m7g, kafka.t3",
        ),
        (
            "spark:\n  core_instance_type: t3.micro\n",
            "spark.core_instance_type = 't3.micro': not an instance type Amazon EMR supports",
        ),
        (
            "flink:\n  task_instance_types: [m7g.xlarge, p9.huge]\n",
            "flink.task_instance_types = ['m7g.xlarge', 'p9.huge']: not an instance type",
        ),
        ("spark:\n  release_label: emr-6.15.0\n", "spark.release_label = 'emr-6.15.0': String"),
        (
            "spark:\n  max_capacity_units: 1\n  core_instance_count: 2\n",
            "spark.max_capacity_units = 1: must be at least core_instance_count (2)",
        ),
        (
            "kafka:\n  min_insync_replicas: 2\n",
            "kafka.min_insync_replicas = 2: must be lower than replication_factor (2), so one "
            "broker can be down without blocking acks=all producers",
        ),
        (
            "kafka:\n  replication_factor: 1\n  min_insync_replicas: 2\n",
            "kafka.min_insync_replicas = 2: must be 1 with replication_factor 1",
        ),
        (
            "kafka:\n  topics:\n    - name: t\n      partitions: 1\n"
            "      schema_file: schemas/avro/member_interaction_event.avsc\n"
            "      previous_schema_files: [schemas/avro/member_interaction_event.avsc]\n",
            "kafka.topics.0.previous_schema_files = "
            "['schemas/avro/member_interaction_event.avsc']: each version is its own file",
        ),
        (
            "kafka:\n  topics:\n    - name: t\n      partitions: 1\n"
            "      schema_file: schemas/avro/member_interaction_event.avsc\n"
            "      previous_schema_files: [schemas/avro/v0.avsc]\n",
            "kafka.topics.0.previous_schema_files.0 = 'schemas/avro/v0.avsc': no such file",
        ),
        (
            "kafka:\n  replication_factor: 3\n  min_insync_replicas: 2\n",
            "kafka.replication_factor = 3: at most the number of brokers (2)",
        ),
        (
            "kafka:\n  storage_autoscaling_max_gib: 100\n",
            "kafka.storage_autoscaling_max_gib = 100: kafka.t3.small brokers do not support",
        ),
        ("kafka:\n  producer_cidrs: [0.0.0.0/0]\n", "is not a private range: brokers are never"),
        (
            "kafka:\n  topics:\n    - name: t\n      partitions: 1\n"
            "      schema_file: schemas/avro/missing.avsc\n",
            "kafka.topics.0.schema_file = 'schemas/avro/missing.avsc': no such file",
        ),
        (
            "metaflow:\n  gpu_queue:\n    instance_types: [m7g.xlarge]\n",
            "metaflow.gpu_queue.instance_types = ['m7g.xlarge']: not an instance type AWS Batch "
            "GPU jobs supports",
        ),
        (
            "metaflow:\n  db_instance_type: db.t4g.micro\n",
            "metaflow.db_instance_type = 'db.t4g.micro': not an instance type RDS PostgreSQL",
        ),
        (
            "metaflow:\n  metadata_service_image: netflixoss/metaflow_metadata_service:latest\n",
            "metaflow.metadata_service_image = 'netflixoss/metaflow_metadata_service:latest': "
            "String should match pattern",
        ),
        (
            "metaflow:\n  min_tasks: 3\n  max_tasks: 2\n",
            "metaflow.max_tasks = 2: must be at least min_tasks (3)",
        ),
        (
            "orchestrator:\n  timezone: Mars/Olympus\n",
            "orchestrator.timezone = 'Mars/Olympus': not an IANA time zone",
        ),
        (
            "alerts:\n  emails: [ops]\n",
            "alerts.emails = ['ops']: 'ops' is not an e-mail address",
        ),
        (
            "alerts:\n  emails: [a@example.com, a@example.com]\n",
            "alerts.emails = ['a@example.com', 'a@example.com']: listed more than once",
        ),
        (
            "protect_stateful_resources: true\n",
            "alerts.emails = []: a protected environment needs at least one subscriber",
        ),
        (
            "orchestrator:\n  emr_step_timeout_minutes: 1\n",
            "orchestrator.emr_step_timeout_minutes = 1: Input should be greater than or equal to 5",
        ),
        (
            "emr_tls:\n  certificates: self-signed\n",
            "emr_tls.certificates = 'self-signed': Input should be 'generated' or 'provided'",
        ),
        (
            "orchestrator:\n  train_recommender_cron: '0 3 * *'\n",
            "orchestrator.train_recommender_cron = '0 3 * *': String should match pattern",
        ),
        (
            "training:\n  instance_type: ml.m5.xlarge\n",
            "training.instance_type = 'ml.m5.xlarge': a CPU instance type; the training service "
            "runs on GPU types",
        ),
        (
            "training:\n  instance_type: ml.g5.huge\n",
            "training.instance_type = 'ml.g5.huge': not an instance type SageMaker GPU training",
        ),
        (
            "training:\n  max_runtime_minutes: 120\n  max_wait_minutes: 60\n",
            "training.max_wait_minutes = 60: must be at least max_runtime_minutes (120)",
        ),
        (
            "training:\n  use_spot: true\n  max_wait_minutes:\n",
            "training.max_wait_minutes = None: required with use_spot",
        ),
        (
            "training:\n  network_isolation: true\n",
            "training.network_isolation = True: needs image_uri",
        ),
        (
            "training:\n  dlc_image_tag: latest\n",
            "training.dlc_image_tag = 'latest': String should match pattern",
        ),
        (
            "kafka:\n  topics: []\n",
            "kafka.topics = []: List should have at least 1 item",
        ),
        (
            "training:\n  instance_count: 0\n",
            "training.instance_count = 0: Input should be greater than or equal to 1",
        ),
        (
            "training:\n  instance_type: ml.g5.12xlarge\n  instance_count: 2\n  batch_size: 7\n",
            "training.batch_size = 7: fewer pairs per step than the 8 GPUs of 2 x ml.g5.12xlarge; "
            "each GPU takes an equal share and needs at least one",
        ),
        (
            "metaflow:\n  api_gateway: api_key\n",
            "metaflow.api_gateway = 'api_key': Input should be 'disabled', 'private' or 'public'",
        ),
        (
            "metaflow:\n  api_gateway: public\n",
            "metaflow.api_allowed_cidrs = []: a public API needs at least one source network",
        ),
        (
            "metaflow:\n  api_gateway: public\n  api_allowed_cidrs: [0.0.0.0/0]\n",
            "metaflow.api_allowed_cidrs = ['0.0.0.0/0']: '0.0.0.0/0' admits every address",
        ),
        (
            "metaflow:\n  api_allowed_cidrs: [203.0.113.0/24]\n",
            "metaflow.api_allowed_cidrs = ['203.0.113.0/24']: only applies to api_gateway: public "
            "(not disabled)",
        ),
        (
            "metaflow:\n  api_rate_limit_per_5min: 50\n",
            "metaflow.api_rate_limit_per_5min = 50: Input should be greater than or equal to 100",
        ),
        (
            "metaflow:\n  client_cidrs: [8.8.8.0/24]\n",
            "metaflow.client_cidrs = ['8.8.8.0/24']: '8.8.8.0/24' is not a private range",
        ),
        (
            "metaflow:\n  metadata_service_image: netflixoss/metaflow_metadata_service:v2.5.0"
            "@sha256:1234\n",
            "metaflow.metadata_service_image = 'netflixoss/metaflow_metadata_service:v2.5.0"
            "@sha256:1234': String should match pattern",
        ),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(tmp_path, override, expected):
    message = error_for(tmp_path, override)
    assert message.startswith("config/dev.yaml + ")
    assert expected in message


def test_several_problems_report_the_first_and_count_the_rest(tmp_path):
    message = error_for(tmp_path, "network:\n  nat_gateways: 0\n  cidr: nope\n")
    assert message.endswith("(and 1 more problem(s))")


def test_missing_required_key_is_named(tmp_path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "qa.yaml").write_text("env_name: qa\nregion: us-east-1\n")
    with pytest.raises(ConfigError, match=r"availability_zones: required key is missing"):
        load_config(env="qa", config_dir=config_dir)


def test_unreadable_yaml_says_where(tmp_path):
    message = error_for(tmp_path, "network:\n  cidr: 10.0.0.0/16\n   bad: : x\n")
    assert message.endswith(
        "not valid YAML at line 3, column 7: mapping values are not allowed here"
    )


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    assert "the top level must be a mapping of keys, not list" in error_for(tmp_path, "- a\n")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nowhere.yaml' does not exist"):
        load_config(env="dev", override_file=tmp_path / "nowhere.yaml")


def test_unknown_env_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"env = 'qa': unknown environment; allowed: dev, prod"):
        load_config(env="qa")


def test_shipped_files_set_every_section_explicitly():
    """The shipped files are the reference examples: no section is left to code defaults."""
    for env in shipped_environments():
        document = yaml.safe_load((REPO_ROOT / "config" / f"{env}.yaml").read_text())
        assert set(PlatformConfig.model_fields) - {"account", "tags"} <= set(document)


def run_app(tmp_path: Path, *context: str) -> subprocess.CompletedProcess:
    outdir = tmp_path / "cdk.out"
    outdir.mkdir()
    cdk_context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]
    cdk_context.update(dict(item.split("=", 1) for item in context))
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=REPO_ROOT,
        env={**os.environ, "CDK_OUTDIR": str(outdir), "CDK_CONTEXT_JSON": json.dumps(cdk_context)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (("env=qa",), "config error: env = 'qa': unknown environment"),
        (("config=does/not/exist.yaml",), "config error: config file 'does/not/exist.yaml'"),
    ],
)
def test_app_stops_with_one_line_and_writes_no_template(tmp_path, context, expected):
    result = run_app(tmp_path, *context)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(expected)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "cdk.out").iterdir()) == []
