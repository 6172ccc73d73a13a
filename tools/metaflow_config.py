"""Writes the Metaflow client configuration of a deployed platform environment.

The Metaflow stack publishes the client settings as one JSON object in the SSM parameter
`/ml-platform-<env>/metaflow/config`; this tool reads it, checks it and writes it where the
Metaflow client looks for it.

    python -m tools.metaflow_config --env ENV [--profile NAME] [--force]
                                    [--config-dir DIR] [--region REGION]

When the environment fronts the metadata service with API Gateway, the tool also reads the
API key from the secret named in `/ml-platform-<env>/metaflow/auth-key-secret` and adds it as
METAFLOW_SERVICE_AUTH_KEY (the file is written with mode 0600 for that reason). The service
URL is written as the stack published it: with `metaflow.api_gateway: private` it is the
private API's endpoint-specific name, `https://<api-id>-<vpce-id>.execute-api.<region>.
amazonaws.com/api/`, which resolves to the API's VPC endpoint from inside the VPC and from
networks connected to it, so Metaflow needs no extra header; with `public` it is the regional
URL, callable only from `metaflow.api_allowed_cidrs`.

With --profile the file is `config_<NAME>.json`, which Metaflow uses when
`METAFLOW_PROFILE=NAME`; without it the file is `config.json`, used when no profile is set.
The directory is --config-dir, else `$METAFLOW_HOME`, else `~/.metaflowconfig`. An existing
file is only replaced with --force. Exits 0 on success, 1 on any failure (one line on stderr)
and 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

# Every key Metaflow needs to run flows on AWS Batch and Step Functions against the metadata
# service. METAFLOW_DATATOOLS_S3ROOT is the spelling Metaflow reads (`metaflow configure aws`
# writes METAFLOW_DATATOOLS_SYSROOT_S3, which Metaflow ignores).
REQUIRED_KEYS: tuple[str, ...] = (
    "METAFLOW_DEFAULT_DATASTORE",
    "METAFLOW_DATASTORE_SYSROOT_S3",
    "METAFLOW_DATATOOLS_S3ROOT",
    "METAFLOW_DEFAULT_METADATA",
    "METAFLOW_SERVICE_URL",
    "METAFLOW_SERVICE_INTERNAL_URL",
    "METAFLOW_BATCH_JOB_QUEUE",
    "METAFLOW_ECS_S3_ACCESS_IAM_ROLE",
    "METAFLOW_SFN_IAM_ROLE",
    "METAFLOW_SFN_STATE_MACHINE_PREFIX",
    "METAFLOW_SFN_DYNAMO_DB_TABLE",
    "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE",
)
OPTIONAL_KEYS: tuple[str, ...] = (
    "METAFLOW_BATCH_CONTAINER_IMAGE",
    "METAFLOW_BATCH_CONTAINER_REGISTRY",
    "METAFLOW_SERVICE_AUTH_KEY",
    "METAFLOW_ECS_FARGATE_EXECUTION_ROLE",
)
S3_KEYS: tuple[str, ...] = ("METAFLOW_DATASTORE_SYSROOT_S3", "METAFLOW_DATATOOLS_S3ROOT")
URL_KEYS: tuple[str, ...] = ("METAFLOW_SERVICE_URL", "METAFLOW_SERVICE_INTERNAL_URL")

# The platform's own rule for environment names (platform_config.model), so a typo fails here
# instead of as a missing parameter.
ENV_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,14}[a-z0-9]")
PROFILE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_CONFIG_DIR = "~/.metaflowconfig"


class ConfigError(Exception):
    """A failure to report to the user as one line; the message names what is wrong."""


def parameter_name(env: str) -> str:
    """Name of the SSM parameter in which the stack of `env` publishes the Metaflow config."""
    return f"/ml-platform-{env}/metaflow/config"


def auth_key_parameter_name(env: str) -> str:
    """SSM parameter naming the secret that holds the API key, present only when the
    environment fronts the metadata service with API Gateway (`metaflow.api_gateway`)."""
    return f"/ml-platform-{env}/metaflow/auth-key-secret"


def fetch_auth_key(ssm_client: Any, env: str) -> str | None:
    """The metadata API key of `env`, or None when the environment has no API Gateway.

    Raises ConfigError when the key is announced but cannot be read.
    """
    name = auth_key_parameter_name(env)
    try:
        secret_arn = ssm_client.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise ConfigError(f"AWS error reading {name}: {exc}") from exc
    secrets = boto3.client("secretsmanager", region_name=ssm_client.meta.region_name)
    try:
        return secrets.get_secret_value(SecretId=secret_arn)["SecretString"]
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(f"cannot read the metadata API key from {secret_arn}: {exc}") from exc


def connect_ssm(region: str | None) -> Any:
    """An SSM client for `region`, or for the region of the default boto3 chain when None.

    Raises ConfigError when no region is configured or the AWS profile cannot be loaded.
    """
    try:
        # A fresh session per call, so credentials are resolved from the environment as it is now.
        return boto3.session.Session().client("ssm", region_name=region)
    except NoRegionError as exc:
        raise ConfigError("no AWS region configured: pass --region or set AWS_REGION") from exc
    except BotoCoreError as exc:
        raise ConfigError(f"AWS configuration error: {exc}") from exc


def fetch_config(ssm_client: Any, name: str) -> dict:
    """The JSON object stored in the SSM parameter `name`, not yet validated.

    Raises ConfigError when the parameter is missing, is not a JSON object, or AWS refuses the
    call (no credentials, access denied and the like).
    """
    region = ssm_client.meta.region_name
    try:
        value = ssm_client.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        if code == "ParameterNotFound":
            raise ConfigError(
                f"SSM parameter {name} not found in {region}: deploy that environment "
                "or check --env and --region"
            ) from exc
        message = error.get("Message") or str(exc)
        raise ConfigError(f"AWS error reading {name} in {region}: {code}: {message}") from exc
    except NoCredentialsError as exc:
        raise ConfigError(
            "no AWS credentials found: set AWS_PROFILE or log in (e.g. aws sso login)"
        ) from exc
    except BotoCoreError as exc:
        raise ConfigError(f"AWS error reading {name} in {region}: {exc}") from exc
    try:
        config = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"SSM parameter {name} is not valid JSON: {exc.msg} "
            f"(line {exc.lineno} column {exc.colno})"
        ) from exc
    if not isinstance(config, dict):
        raise ConfigError(
            f"SSM parameter {name} holds a JSON {type(config).__name__}, not an object"
        )
    return config


def validate(config: dict) -> dict[str, str]:
    """The Metaflow settings of `config`, checked: exactly the keys Metaflow is given.

    Every required key and any optional key present must be a non-empty string; no other key
    is allowed. The datastore must be `s3`, the metadata provider `service`, the S3 roots
    `s3://` URLs and the service URLs http(s) URLs. Raises ConfigError naming the first
    problem found (all offending keys when keys are unknown, missing or not strings).
    """
    unknown = sorted(set(config) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) in the Metaflow config: {', '.join(unknown)} "
            "(the stack and tools/metaflow_config.py disagree)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ConfigError(f"missing required key(s) in the Metaflow config: {', '.join(missing)}")
    # Ordered as REQUIRED_KEYS then OPTIONAL_KEYS so the keys named in errors are in a fixed order.
    checked = {key: config[key] for key in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if key in config}
    not_strings = [key for key, value in checked.items() if not isinstance(value, str)]
    if not_strings:
        raise ConfigError(f"non-string value(s) in the Metaflow config: {', '.join(not_strings)}")
    empty = [key for key, value in checked.items() if not value.strip()]
    if empty:
        raise ConfigError(f"empty value in the Metaflow config: {', '.join(empty)}")

    if checked["METAFLOW_DEFAULT_DATASTORE"] != "s3":
        raise ConfigError(
            "METAFLOW_DEFAULT_DATASTORE must be 's3', "
            f"got {checked['METAFLOW_DEFAULT_DATASTORE']!r}"
        )
    if checked["METAFLOW_DEFAULT_METADATA"] != "service":
        raise ConfigError(
            "METAFLOW_DEFAULT_METADATA must be 'service', "
            f"got {checked['METAFLOW_DEFAULT_METADATA']!r}"
        )
    for key in S3_KEYS:
        if not _is_url(checked[key], ("s3",)):
            raise ConfigError(f"{key} must be an s3:// URL, got {checked[key]!r}")
    for key in URL_KEYS:
        if not _is_url(checked[key], ("http", "https")):
            raise ConfigError(f"{key} must be an http(s) URL, got {checked[key]!r}")
    return checked


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    """True when `value` is a URL with one of `schemes` and a host (or bucket) part."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in schemes and bool(parts.netloc) and value == value.strip()


def resolve_config_dir(explicit: str | None) -> Path:
    """The Metaflow config directory: `explicit`, else $METAFLOW_HOME, else ~/.metaflowconfig."""
    chosen = explicit or os.environ.get("METAFLOW_HOME") or DEFAULT_CONFIG_DIR
    return Path(chosen).expanduser()


def target_path(config_dir: Path, profile: str | None) -> Path:
    """The file Metaflow reads for `profile` (`config_<profile>.json`, else `config.json`)."""
    return config_dir / (f"config_{profile}.json" if profile else "config.json")


def write_config(path: Path, config: dict[str, str], force: bool) -> None:
    """Writes `config` to `path` as sorted, indented JSON with mode 0600, atomically.

    Creates the directory with mode 0700 when it is missing. Raises FileExistsError, leaving
    the file untouched, when `path` exists and `force` is false; readers never see a partly
    written file.
    """
    if not force and path.exists():
        raise FileExistsError(path)
    # The file may hold the service auth key, so neither it nor its directory is readable by
    # other users.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600; the rename keeps that mode.
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as temp:
            temp.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def _env_name(value: str) -> str:
    if not ENV_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid environment name {value!r}: 2-16 of a-z, 0-9 and '-', "
            "starting with a letter and not ending with '-'"
        )
    return value


def _profile_name(value: str) -> str:
    if not PROFILE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid profile name {value!r}: 1-64 of A-Z, a-z, 0-9, '_' and '-'"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.metaflow_config",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument(
        "--env", required=True, type=_env_name, help="platform environment, e.g. dev"
    )
    parser.add_argument(
        "--profile",
        type=_profile_name,
        help="write config_<NAME>.json, selected with METAFLOW_PROFILE=NAME",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument(
        "--config-dir", help="directory to write to (default: $METAFLOW_HOME or ~/.metaflowconfig)"
    )
    parser.add_argument("--region", help="AWS region (default: the boto3 configuration chain)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the tool with `argv` (default: sys.argv[1:]) and returns the exit status.

    Returns 0 after writing the file and printing its path, 1 after printing one line on stderr
    for any failure; usage errors exit with status 2 through argparse.
    """
    args = _parser().parse_args(argv)
    path = target_path(resolve_config_dir(args.config_dir), args.profile)
    name = parameter_name(args.env)
    try:
        ssm_client = connect_ssm(args.region)
        config = fetch_config(ssm_client, name)
        auth_key = fetch_auth_key(ssm_client, args.env)
        if auth_key is not None:
            config["METAFLOW_SERVICE_AUTH_KEY"] = auth_key
        config = validate(config)
        write_config(path, config, force=args.force)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileExistsError:
        print(f"error: {path} already exists; pass --force to replace it", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.profile:
        hint = f"select it with: export METAFLOW_PROFILE={args.profile}"
    else:
        hint = "Metaflow uses it when METAFLOW_PROFILE is unset"
    print(f"wrote {path} ({name}); {hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
