"""Fixtures for the Lambda handler tests: fake AWS credentials, moto, a Lambda context, and a
loader that imports each `lambda/<name>/handler.py` afresh by file path.

`lambda` is a Python keyword, so the handlers cannot be imported as a package; and every
handler reads its environment and creates its boto3 clients at import, as it does on a cold
start, so each test imports its own copy after setting the environment and starting moto.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import boto3
import pytest
from botocore.client import BaseClient
from moto import mock_aws

LAMBDA_ROOT = Path(__file__).resolve().parents[2] / "lambda"
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
_module_numbers = itertools.count()


@dataclass
class FakeLambdaContext:
    """The attributes of the Lambda context object that the handlers and Powertools read."""

    function_name: str = "test-function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:test-function"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"
    remaining_millis: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_millis


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and a fixed region, so nothing can reach a real account."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "test-function")


@pytest.fixture(scope="session")
def fake_boto3_session() -> boto3.session.Session:
    """One session with fake credentials for the whole run: its loader caches the service
    models, which a fresh session would parse again for every client."""
    return boto3.session.Session(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
        region_name=REGION,
    )


@pytest.fixture
def mocked_aws(
    monkeypatch: pytest.MonkeyPatch, fake_boto3_session: boto3.session.Session
) -> Iterator[None]:
    """moto for every AWS call made while the test runs, with `boto3.client` (used by the
    handlers and the tests alike) going through the shared fake session."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", fake_boto3_session)
    with mock_aws(config={"core": {"reset_boto3_session": False}}):
        yield


@pytest.fixture(scope="session")
def _cached_clients(fake_boto3_session: boto3.session.Session) -> Callable[[str], BaseClient]:
    return functools.cache(fake_boto3_session.client)


@pytest.fixture
def aws_client(mocked_aws, _cached_clients) -> Callable[[str], BaseClient]:
    """Clients for the tests' own set-up and checks, created once for the run: moto serves
    them whenever a mock is active. The handlers create their own, as on a cold start."""
    return _cached_clients


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def load_handler() -> Iterator[Callable[[str], ModuleType]]:
    """Imports `lambda/<name>/handler.py` under a module name no other test uses."""
    loaded: list[str] = []

    def load(name: str) -> ModuleType:
        module_name = f"lambda_{name}_handler_{next(_module_numbers)}"
        spec = importlib.util.spec_from_file_location(
            module_name, LAMBDA_ROOT / name / "handler.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        loaded.append(module_name)
        spec.loader.exec_module(module)
        return module

    yield load
    for module_name in loaded:
        sys.modules.pop(module_name, None)
