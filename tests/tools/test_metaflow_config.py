"""tools/metaflow_config.py against an SSM parameter served by moto, with tmp_path as home."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tools import metaflow_config

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMETER = "/ml-platform-dev/metaflow/config"

VALID_CONFIG = {
    "METAFLOW_DEFAULT_DATASTORE": "s3",
    "METAFLOW_DATASTORE_SYSROOT_S3": "s3://ml-platform-dev-metaflow/metaflow",
    "METAFLOW_DATATOOLS_S3ROOT": "s3://ml-platform-dev-metaflow/data",
    "METAFLOW_DEFAULT_METADATA": "service",
    "METAFLOW_SERVICE_URL": "https://abc123.execute-api.us-east-1.amazonaws.com/api",
    "METAFLOW_SERVICE_INTERNAL_URL": "http://metadata.ml-platform-dev.internal:8080",
    "METAFLOW_BATCH_JOB_QUEUE": "arn:aws:batch:us-east-1:123456789012:job-queue/mf-dev",
    "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/mf-dev-batch",
    "METAFLOW_SFN_IAM_ROLE": "arn:aws:iam::123456789012:role/mf-dev-sfn",
    "METAFLOW_SFN_STATE_MACHINE_PREFIX": "ml-platform-dev",
    "METAFLOW_SFN_DYNAMO_DB_TABLE": "ml-platform-dev-metaflow-sfn",
    "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/mf-dev-events",
}

# Written out by hand so the test pins the format (two-space indent, sorted keys, final newline)
# rather than re-deriving it the way the tool does.
EXPECTED_TEXT = """\
{
  "METAFLOW_BATCH_JOB_QUEUE": "arn:aws:batch:us-east-1:123456789012:job-queue/mf-dev",
  "METAFLOW_DATASTORE_SYSROOT_S3": "s3://ml-platform-dev-metaflow/metaflow",
  "METAFLOW_DATATOOLS_S3ROOT": "s3://ml-platform-dev-metaflow/data",
  "METAFLOW_DEFAULT_DATASTORE": "s3",
  "METAFLOW_DEFAULT_METADATA": "service",
  "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/mf-dev-batch",
  "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/mf-dev-events",
  "METAFLOW_SERVICE_INTERNAL_URL": "http://metadata.ml-platform-dev.internal:8080",
  "METAFLOW_SERVICE_URL": "https://abc123.execute-api.us-east-1.amazonaws.com/api",
  "METAFLOW_SFN_DYNAMO_DB_TABLE": "ml-platform-dev-metaflow-sfn",
  "METAFLOW_SFN_IAM_ROLE": "arn:aws:iam::123456789012:role/mf-dev-sfn",
  "METAFLOW_SFN_STATE_MACHINE_PREFIX": "ml-platform-dev"
}
"""

OPTIONAL_VALUES = {
    "METAFLOW_BATCH_CONTAINER_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/mf:py311",
    "METAFLOW_BATCH_CONTAINER_REGISTRY": "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    "METAFLOW_SERVICE_AUTH_KEY": "k3y",
    "METAFLOW_ECS_FARGATE_EXECUTION_ROLE": "arn:aws:iam::123456789012:role/mf-dev-exec",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment with no AWS credentials or region and an empty home; returns the home."""
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "METAFLOW_HOME",
        "METAFLOW_PROFILE",
    ):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    # Keeps botocore from probing the instance metadata endpoint for credentials.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@pytest.fixture
def aws_env(no_aws: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake credentials and us-east-1 on top of `no_aws`; returns the home."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return no_aws


@pytest.fixture
def ssm(aws_env: Path) -> Iterator[Any]:
    """An SSM client on moto's us-east-1, without the Metaflow parameter."""
    with mock_aws():
        yield boto3.client("ssm", region_name="us-east-1")


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A config directory that does not exist yet."""
    return tmp_path / "metaflow"


def put(ssm: Any, value: str | dict, name: str = PARAMETER) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    ssm.put_parameter(Name=name, Value=text, Type="String")


def run(*argv: str) -> int:
    return metaflow_config.main(list(argv))


def test_key_constants_are_the_metaflow_settings() -> None:
    assert tuple(VALID_CONFIG) == metaflow_config.REQUIRED_KEYS
    assert tuple(OPTIONAL_VALUES) == metaflow_config.OPTIONAL_KEYS
    assert metaflow_config.parameter_name("dev") == PARAMETER


def test_writes_config_json(ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    put(ssm, VALID_CONFIG)

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 0

    written = config_dir / "config.json"
    assert written.read_text() == EXPECTED_TEXT
    assert mode(written) == 0o600
    assert mode(config_dir) == 0o700
    assert [p.name for p in config_dir.iterdir()] == ["config.json"]
    out, err = capsys.readouterr()
    assert out == (
        f"wrote {written} ({PARAMETER}); Metaflow uses it when METAFLOW_PROFILE is unset\n"
    )
    assert err == ""


def test_writes_profile_file_with_optional_keys(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(ssm, {**VALID_CONFIG, **OPTIONAL_VALUES})

    assert run("--env", "dev", "--profile", "research_1", "--config-dir", str(config_dir)) == 0

    written = config_dir / "config_research_1.json"
    assert json.loads(written.read_text()) == {**VALID_CONFIG, **OPTIONAL_VALUES}
    assert mode(written) == 0o600
    assert [p.name for p in config_dir.iterdir()] == ["config_research_1.json"]
    out, err = capsys.readouterr()
    assert out == (
        f"wrote {written} ({PARAMETER}); select it with: export METAFLOW_PROFILE=research_1\n"
    )
    assert err == ""


def test_refuses_to_overwrite_without_force(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(ssm, VALID_CONFIG)
    config_dir.mkdir()
    existing = config_dir / "config.json"
    existing.write_text('{"METAFLOW_PROFILE_OWNER": "me"}\n')
    existing.chmod(0o644)

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 1

    assert existing.read_text() == '{"METAFLOW_PROFILE_OWNER": "me"}\n'
    assert mode(existing) == 0o644
    assert [p.name for p in config_dir.iterdir()] == ["config.json"]
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {existing} already exists; pass --force to replace it\n"


def test_force_replaces_existing_file(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(ssm, VALID_CONFIG)
    config_dir.mkdir()
    existing = config_dir / "config.json"
    existing.write_text("stale\n")
    existing.chmod(0o644)

    assert run("--env", "dev", "--config-dir", str(config_dir), "--force") == 0

    assert existing.read_text() == EXPECTED_TEXT
    assert mode(existing) == 0o600
    assert [p.name for p in config_dir.iterdir()] == ["config.json"]
    assert capsys.readouterr().err == ""


def test_metaflow_home_is_the_default_directory(
    ssm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(ssm, VALID_CONFIG)
    metaflow_home = tmp_path / "mf-home"
    monkeypatch.setenv("METAFLOW_HOME", str(metaflow_home))

    assert run("--env", "dev", "--profile", "dev") == 0

    assert (metaflow_home / "config_dev.json").read_text() == EXPECTED_TEXT
    assert [p.name for p in metaflow_home.iterdir()] == ["config_dev.json"]


def test_config_dir_overrides_metaflow_home(
    ssm: Any, tmp_path: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(ssm, VALID_CONFIG)
    metaflow_home = tmp_path / "mf-home"
    monkeypatch.setenv("METAFLOW_HOME", str(metaflow_home))

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 0

    assert (config_dir / "config.json").read_text() == EXPECTED_TEXT
    assert not metaflow_home.exists()


def test_home_metaflowconfig_is_the_fallback(ssm: Any, aws_env: Path) -> None:
    put(ssm, VALID_CONFIG)

    assert run("--env", "dev") == 0

    default_dir = aws_env / ".metaflowconfig"
    assert (default_dir / "config.json").read_text() == EXPECTED_TEXT
    assert mode(default_dir) == 0o700


def test_missing_parameter_names_it_and_the_region(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deployed in us-east-1, asked for in eu-west-1: --region must reach the client.
    put(ssm, VALID_CONFIG)

    assert run("--env", "dev", "--region", "eu-west-1", "--config-dir", str(config_dir)) == 1

    assert not config_dir.exists()
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: SSM parameter {PARAMETER} not found in eu-west-1: deploy that environment "
        "or check --env and --region\n"
    )


def with_changes(**changes: Any) -> dict:
    """VALID_CONFIG with keys set to the given values, or removed where the value is None."""
    config = {**VALID_CONFIG, **changes}
    return {key: value for key, value in config.items() if value is not None}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            '{"METAFLOW_DEFAULT_DATASTORE": "s3",',
            f"SSM parameter {PARAMETER} is not valid JSON: "
            "Expecting property name enclosed in double quotes (line 1 column 37)",
            id="not-json",
        ),
        pytest.param(
            json.dumps([VALID_CONFIG]),
            f"SSM parameter {PARAMETER} holds a JSON list, not an object",
            id="not-an-object",
        ),
        pytest.param(
            with_changes(METAFLOW_SFN_IAM_ROLE=None, METAFLOW_DATATOOLS_S3ROOT=None),
            "missing required key(s) in the Metaflow config: "
            "METAFLOW_DATATOOLS_S3ROOT, METAFLOW_SFN_IAM_ROLE",
            id="missing-keys",
        ),
        pytest.param(
            with_changes(METAFLOW_SERVICE_URL=""),
            "empty value in the Metaflow config: METAFLOW_SERVICE_URL",
            id="empty-service-url",
        ),
        pytest.param(
            with_changes(METAFLOW_SERVICE_AUTH_KEY="  "),
            "empty value in the Metaflow config: METAFLOW_SERVICE_AUTH_KEY",
            id="blank-optional-key",
        ),
        pytest.param(
            with_changes(METAFLOW_BATCH_JOB_QUEUE=42),
            "non-string value(s) in the Metaflow config: METAFLOW_BATCH_JOB_QUEUE",
            id="non-string",
        ),
        pytest.param(
            # The spelling `metaflow configure aws` writes, which Metaflow itself never reads.
            with_changes(METAFLOW_DATATOOLS_SYSROOT_S3="s3://ml-platform-dev-metaflow/data"),
            "unknown key(s) in the Metaflow config: METAFLOW_DATATOOLS_SYSROOT_S3 "
            "(the stack and tools/metaflow_config.py disagree)",
            id="unknown-key",
        ),
        pytest.param(
            with_changes(METAFLOW_DEFAULT_DATASTORE="local"),
            "METAFLOW_DEFAULT_DATASTORE must be 's3', got 'local'",
            id="wrong-datastore",
        ),
        pytest.param(
            with_changes(METAFLOW_DEFAULT_METADATA="local"),
            "METAFLOW_DEFAULT_METADATA must be 'service', got 'local'",
            id="wrong-metadata",
        ),
        pytest.param(
            with_changes(METAFLOW_SERVICE_URL="abc123.execute-api.us-east-1.amazonaws.com"),
            "METAFLOW_SERVICE_URL must be an http(s) URL, "
            "got 'abc123.execute-api.us-east-1.amazonaws.com'",
            id="service-url-without-scheme",
        ),
        pytest.param(
            with_changes(METAFLOW_SERVICE_INTERNAL_URL="ftp://metadata.internal"),
            "METAFLOW_SERVICE_INTERNAL_URL must be an http(s) URL, got 'ftp://metadata.internal'",
            id="internal-url-wrong-scheme",
        ),
        pytest.param(
            with_changes(METAFLOW_DATASTORE_SYSROOT_S3="/tmp/metaflow"),
            "METAFLOW_DATASTORE_SYSROOT_S3 must be an s3:// URL, got '/tmp/metaflow'",
            id="sysroot-not-s3",
        ),
    ],
)
def test_invalid_parameter_writes_nothing(
    ssm: Any,
    config_dir: Path,
    capsys: pytest.CaptureFixture[str],
    value: str | dict,
    message: str,
) -> None:
    put(ssm, value)

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 1

    assert not config_dir.exists()
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: {message}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--env", "Dev"],
            "argument --env: invalid environment name 'Dev': 2-16 of a-z, 0-9 and '-', "
            "starting with a letter and not ending with '-'",
            id="env-uppercase",
        ),
        pytest.param(["--env", "d"], "argument --env: invalid environment name 'd'", id="env-1"),
        pytest.param(["--env", "dev-"], "argument --env: invalid environment name", id="env-dash"),
        pytest.param(["--env", "1dev"], "argument --env: invalid environment name", id="env-digit"),
        pytest.param(["--env", "a" * 17], "argument --env: invalid environment name", id="env-17"),
        pytest.param(["--env", "dev\n"], "argument --env: invalid environment name", id="env-nl"),
        pytest.param(
            ["--env", "dev", "--profile", "../prod"],
            "argument --profile: invalid profile name '../prod': "
            "1-64 of A-Z, a-z, 0-9, '_' and '-'",
            id="profile-path",
        ),
        pytest.param(
            ["--env", "dev", "--profile", ""],
            "argument --profile: invalid profile name",
            id="profile-empty",
        ),
        pytest.param(
            ["--env", "dev", "--profile", "p" * 65],
            "argument --profile: invalid profile name",
            id="profile-65",
        ),
        pytest.param([], "the following arguments are required: --env", id="no-env"),
    ],
)
def test_bad_arguments_are_usage_errors(
    no_aws: Path,
    config_dir: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(*argv, "--config-dir", str(config_dir))

    assert exited.value.code == 2
    assert not config_dir.exists()
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith(f"python -m tools.metaflow_config: error: {message}")


@pytest.mark.parametrize("env", ["ab", "a" * 16, "ml-prod-2"])
def test_boundary_env_names_reach_ssm(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str], env: str
) -> None:
    assert run("--env", env, "--config-dir", str(config_dir)) == 1

    assert capsys.readouterr().err.startswith(
        f"error: SSM parameter /ml-platform-{env}/metaflow/config not found in us-east-1:"
    )


def test_no_credentials_is_one_line(
    no_aws: Path,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 1

    assert not config_dir.exists()
    assert capsys.readouterr().err == (
        "error: no AWS credentials found: set AWS_PROFILE or log in (e.g. aws sso login)\n"
    )


def test_no_region_is_one_line(
    no_aws: Path, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("--env", "dev", "--config-dir", str(config_dir)) == 1

    assert capsys.readouterr().err == (
        "error: no AWS region configured: pass --region or set AWS_REGION\n"
    )


def test_access_denied_is_one_line(
    aws_env: Path,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = boto3.session.Session().client("ssm", region_name="eu-west-1")
    stubber = Stubber(client)
    stubber.add_client_error(
        "get_parameter",
        service_error_code="AccessDeniedException",
        service_message="User: arn:aws:iam::123456789012:user/ds is not authorized",
        http_status_code=400,
        expected_params={"Name": PARAMETER},
    )
    monkeypatch.setattr(metaflow_config, "connect_ssm", lambda region: client)

    with stubber:
        assert run("--env", "dev", "--config-dir", str(config_dir)) == 1
    stubber.assert_no_pending_responses()

    assert not config_dir.exists()
    assert capsys.readouterr().err == (
        f"error: AWS error reading {PARAMETER} in eu-west-1: AccessDeniedException: "
        "User: arn:aws:iam::123456789012:user/ds is not authorized\n"
    )


def test_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.metaflow_config", "--env", "Dev"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert "error: argument --env: invalid environment name 'Dev'" in result.stderr


def test_api_key_of_an_api_gateway_environment_is_added(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(ssm, VALID_CONFIG)
    secrets = boto3.client("secretsmanager", region_name="us-east-1")
    arn = secrets.create_secret(Name="mf-key", SecretString="k" * 40)["ARN"]
    put(ssm, arn, name=metaflow_config.auth_key_parameter_name("dev"))

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 0

    written = json.loads((config_dir / "config.json").read_text())
    assert written == {**VALID_CONFIG, "METAFLOW_SERVICE_AUTH_KEY": "k" * 40}
    assert mode(config_dir / "config.json") == 0o600
    assert capsys.readouterr().err == ""


def test_announced_but_unreadable_api_key_writes_nothing(
    ssm: Any, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put(ssm, VALID_CONFIG)
    put(
        ssm,
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:gone",
        name=(metaflow_config.auth_key_parameter_name("dev")),
    )

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 1

    assert not config_dir.exists()
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the metadata API key from arn:aws:secretsmanager:")
    assert err.count("\n") == 1


def test_a_private_apis_endpoint_specific_url_is_written_as_published(
    ssm: Any, config_dir: Path
) -> None:
    # What the prod stack publishes with `api_gateway: private`.
    url = "https://a1b2c3d4e5-vpce-0123456789abcdef0.execute-api.us-east-1.amazonaws.com/api/"
    put(ssm, {**VALID_CONFIG, "METAFLOW_SERVICE_URL": url})

    assert run("--env", "dev", "--config-dir", str(config_dir)) == 0

    assert json.loads((config_dir / "config.json").read_text())["METAFLOW_SERVICE_URL"] == url
