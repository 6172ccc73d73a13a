"""The Metaflow metadata database custom resources: the schema migration against a local
stand-in for the migration service of netflixoss/metaflow_metadata_service (its HTTP API on
127.0.0.1), the database user's one-off ECS task against moto, and the script that task runs
against a recording stand-in for psycopg2."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ecs import models as ecs_models
from moto.moto_api import state_manager

from tests.lambdas.conftest import ACCOUNT_ID, REGION

FOLDER = Path(__file__).resolve().parents[2] / "lambda" / "metaflow_migration"
VERSIONS = ["20240509201906", "20260615000000", "20260912191955"]
OLD_VERSION, LATEST_VERSION = VERSIONS[0], VERSIONS[-1]
STATUS_PATH = "/db_schema_status"


@dataclass
class FakeMigrationService:
    """What the upstream service answers (services/migration_service/api/admin.py)."""

    up_to_date: bool = False
    upgrade_applies: bool = True
    upgrade_answer: tuple[int, str] = (200, "upgrade success")
    # GET /db_schema_status answers 500 {"detail": ...} this many times first, as it does
    # while goose cannot reach the database.
    unready_answers: int = 0
    content_type: str = "application/json"
    # A body answered with 200 instead of the status, for answers the handler must refuse.
    raw_status: str | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def status(self) -> dict:
        version = LATEST_VERSION if self.up_to_date else OLD_VERSION
        unapplied = VERSIONS[VERSIONS.index(version) + 1 :]
        return {
            "is_up_to_date": not unapplied,
            "current_version": version,
            "migration_in_progress": bool(unapplied),
            "db_schema_versions": VERSIONS,
            "unapplied_migrations": unapplied,
        }

    def answer(self, method: str, path: str) -> tuple[int, str, str]:
        self.requests.append((method, path))
        if method == "GET" and path == STATUS_PATH:
            if self.raw_status is not None:
                return 200, self.content_type, self.raw_status
            if self.unready_answers:
                self.unready_answers -= 1
                detail = "Exception('unable to get db version via goose: connection refused')"
                return 500, self.content_type, json.dumps({"detail": detail})
            return 200, self.content_type, json.dumps(self.status())
        if method == "PATCH" and path == "/upgrade":
            if self.upgrade_applies:
                self.up_to_date = True
            code, text = self.upgrade_answer
            return code, "text/plain", text
        return 404, "text/plain", "404: Not Found"


def _handler_for(service: FakeMigrationService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, content_type, body = service.answer(self.command, self.path)
            payload = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args) -> None:
            pass

    # http.server dispatches each request to the handler's do_<METHOD>.
    for method in ("GET", "PATCH"):
        setattr(Handler, f"do_{method}", Handler._reply)
    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[[FakeMigrationService, int], None]]:
    """Starts a service on 127.0.0.1 at a port (0: any free one); stopped after the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(service: FakeMigrationService, port: int = 0) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(service))
        server.daemon_threads = True
        service.url = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def service(serve) -> FakeMigrationService:
    running = FakeMigrationService()
    serve(running)
    return running


@pytest.fixture
def load_migration(load_handler, monkeypatch) -> Callable[[str], ModuleType]:
    """The handler pointed at a URL, with millisecond backoff and a 5 s wait by default."""

    def load(url: str) -> ModuleType:
        monkeypatch.setenv("MIGRATION_URL", url)
        monkeypatch.setenv("MAX_WAIT_SECONDS", "5")
        # The Lambda runtime puts the handler's folder on sys.path for its sibling modules.
        monkeypatch.syspath_prepend(str(FOLDER))
        module = load_handler("metaflow_migration")
        monkeypatch.setattr(module, "INITIAL_BACKOFF_SECONDS", 0.02)
        monkeypatch.setattr(module, "MAX_BACKOFF_SECONDS", 0.05)
        return module

    return load


def custom_resource_event(request_type: str) -> dict:
    return {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:provider-framework",
        "ResponseURL": "https://cloudformation-custom-resource-response.example/",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/mlp-dev-metaflow/guid",
        "RequestId": "e0b1c0de-0000-4000-8000-000000000000",
        "LogicalResourceId": "MetaflowMetadataSchemaMigration",
        "ResourceType": "Custom::MetaflowSchemaMigration",
        "ResourceProperties": {
            "ServiceToken": "token",
            "Image": "netflixoss/metaflow_metadata_service:v2.5.0",
            "TaskDefinition": f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/metadata:3",
        },
        **({"PhysicalResourceId": "metaflow-db-schema"} if request_type != "Create" else {}),
    }


UPGRADE_CALLS = [("GET", STATUS_PATH), ("PATCH", "/upgrade"), ("GET", STATUS_PATH)]


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_upgrades_a_schema_that_is_behind(service, load_migration, lambda_context, request_type):
    migration = load_migration(service.url)

    result = migration.handler(custom_resource_event(request_type), lambda_context)

    assert result == {
        "PhysicalResourceId": "metaflow-db-schema",
        "Data": {"CurrentVersion": LATEST_VERSION, "Upgraded": "true"},
    }
    assert service.requests == UPGRADE_CALLS


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
def test_an_up_to_date_schema_is_left_alone(serve, load_migration, lambda_context, content_type):
    # Older releases send the status JSON without a JSON content type.
    service = FakeMigrationService(up_to_date=True, content_type=content_type)
    serve(service)
    migration = load_migration(service.url)

    result = migration.handler(custom_resource_event("Update"), lambda_context)

    assert result == {
        "PhysicalResourceId": "metaflow-db-schema",
        "Data": {"CurrentVersion": LATEST_VERSION, "Upgraded": "false"},
    }
    assert service.requests == [("GET", STATUS_PATH)]


def test_an_upgrade_that_does_not_take_fails_the_deploy(serve, load_migration, lambda_context):
    service = FakeMigrationService(upgrade_applies=False)
    serve(service)
    migration = load_migration(service.url)

    with pytest.raises(migration.MigrationError) as error:
        migration.handler(custom_resource_event("Update"), lambda_context)

    assert str(error.value) == (
        "the schema is still not up to date after the upgrade: " + json.dumps(service.status())
    )
    assert json.loads(str(error.value).split(": ", 1)[1])["unapplied_migrations"] == VERSIONS[1:]
    assert service.requests == UPGRADE_CALLS


def test_a_failed_upgrade_fails_the_deploy(serve, load_migration, lambda_context):
    service = FakeMigrationService(upgrade_applies=False, upgrade_answer=(500, "upgrade failed"))
    serve(service)
    migration = load_migration(service.url)

    with pytest.raises(migration.MigrationError) as error:
        migration.handler(custom_resource_event("Create"), lambda_context)

    assert str(error.value) == f"PATCH {service.url}/upgrade answered HTTP 500: upgrade failed"
    assert service.requests == UPGRADE_CALLS[:2]


def test_waits_for_a_service_that_is_still_starting(
    serve, free_port, load_migration, lambda_context
):
    service = FakeMigrationService()
    migration = load_migration(f"http://127.0.0.1:{free_port}")
    started = time.monotonic()
    starter = threading.Timer(0.3, serve, args=(service, free_port))
    starter.start()
    try:
        result = migration.handler(custom_resource_event("Create"), lambda_context)
    finally:
        starter.join()

    assert time.monotonic() - started >= 0.3
    assert result["Data"] == {"CurrentVersion": LATEST_VERSION, "Upgraded": "true"}
    assert service.requests == UPGRADE_CALLS


def test_retries_while_the_service_cannot_read_the_database(serve, load_migration, lambda_context):
    service = FakeMigrationService(unready_answers=2)
    serve(service)
    migration = load_migration(service.url)

    result = migration.handler(custom_resource_event("Create"), lambda_context)

    assert result["Data"] == {"CurrentVersion": LATEST_VERSION, "Upgraded": "true"}
    assert service.requests == [("GET", STATUS_PATH)] * 2 + UPGRADE_CALLS


def test_gives_up_on_a_service_that_never_answers(
    free_port, load_migration, lambda_context, monkeypatch
):
    url = f"http://127.0.0.1:{free_port}"
    migration = load_migration(url)
    monkeypatch.setenv("MAX_WAIT_SECONDS", "0.3")
    started = time.monotonic()

    with pytest.raises(migration.ServiceUnavailableError) as error:
        migration.handler(custom_resource_event("Create"), lambda_context)

    assert 0.3 <= time.monotonic() - started < 2
    assert re.fullmatch(
        rf"the migration service at {re.escape(url)} did not answer within 0\.3 s "
        rf"\((\d+) attempts\); last error: GET {re.escape(url)}{STATUS_PATH}: "
        r"<urlopen error \[Errno 111\] Connection refused>",
        str(error.value),
    )
    attempts = int(re.search(r"\((\d+) attempts\)", str(error.value)).group(1))
    assert attempts >= 3


def test_the_wait_leaves_time_for_the_upgrade(free_port, load_migration, lambda_context):
    migration = load_migration(f"http://127.0.0.1:{free_port}")
    lambda_context.remaining_millis = int((migration.RESERVED_SECONDS + 0.2) * 1000)
    started = time.monotonic()

    with pytest.raises(migration.ServiceUnavailableError, match=r"within 0\.2 s"):
        migration.handler(custom_resource_event("Create"), lambda_context)

    # MAX_WAIT_SECONDS is 5; the function's remaining time cut the wait short.
    assert time.monotonic() - started < 1.5


def test_a_status_the_service_does_not_have_fails_at_once(service, load_migration, lambda_context):
    migration = load_migration(f"{service.url}/metadata")

    with pytest.raises(migration.MigrationError) as error:
        migration.handler(custom_resource_event("Create"), lambda_context)

    assert str(error.value) == (
        f"GET {service.url}/metadata{STATUS_PATH} answered HTTP 404: 404: Not Found"
    )
    assert service.requests == [("GET", f"/metadata{STATUS_PATH}")]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("pong", "something other than JSON"),
        ('{"current_version": "1"}', "without a boolean is_up_to_date"),
        ('{"is_up_to_date": "true"}', "without a boolean is_up_to_date"),
        ('["is_up_to_date"]', "without a boolean is_up_to_date"),
    ],
)
def test_an_unexpected_status_fails(serve, load_migration, lambda_context, body, problem):
    service = FakeMigrationService(raw_status=body)
    serve(service)
    migration = load_migration(service.url)

    with pytest.raises(migration.MigrationError) as error:
        migration.handler(custom_resource_event("Create"), lambda_context)

    assert str(error.value) == f"GET {service.url}{STATUS_PATH} answered {problem}: {body}"
    assert service.requests == [("GET", STATUS_PATH)]


def test_delete_calls_nothing(service, load_migration, lambda_context):
    migration = load_migration(service.url)

    result = migration.handler(custom_resource_event("Delete"), lambda_context)

    assert result == {"PhysicalResourceId": "metaflow-db-schema"}
    assert service.requests == []


def test_rejects_an_unknown_request_type(service, load_migration, lambda_context):
    migration = load_migration(service.url)

    with pytest.raises(ValueError, match=r"^unknown RequestType 'Replace'$"):
        migration.handler(custom_resource_event("Replace"), lambda_context)

    assert service.requests == []


def test_rejects_an_unknown_resource_type(service, load_migration, lambda_context):
    migration = load_migration(service.url)
    event = {**custom_resource_event("Create"), "ResourceType": "Custom::MetaflowDbMigration"}

    with pytest.raises(ValueError, match=r"^unknown ResourceType 'Custom::MetaflowDbMigration'$"):
        migration.handler(event, lambda_context)

    assert service.requests == []


@pytest.mark.parametrize("value", ["ten", "-1", "inf", "nan"])
def test_rejects_a_bad_max_wait(service, load_migration, lambda_context, monkeypatch, value):
    migration = load_migration(service.url)
    monkeypatch.setenv("MAX_WAIT_SECONDS", value)

    with pytest.raises(ValueError, match=r"^MAX_WAIT_SECONDS") as error:
        migration.handler(custom_resource_event("Create"), lambda_context)

    assert str(error.value) == (
        f"MAX_WAIT_SECONDS must be a non-negative number of seconds, got {value!r}"
    )
    assert service.requests == []


# The database user: a one-off ECS task, run through moto.


@pytest.fixture
def ecs_world(aws_client, monkeypatch) -> dict[str, Any]:
    """A cluster, a Fargate task definition and a subnet and security group in moto."""
    # moto 5.2.5 gives the network interface of an awsvpc task no private DNS name and then
    # fails on reading it; the name plays no part in these tests.
    monkeypatch.setattr(
        NetworkInterface, "private_dns_name", "ip-10-0-1-5.ec2.internal", raising=False
    )
    ec2, ecs = aws_client("ec2"), aws_client("ecs")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="db-user", Description="task", VpcId=vpc)
    cluster = ecs.create_cluster(clusterName="metadata")["cluster"]["clusterArn"]
    definition = ecs.register_task_definition(
        family="db-user",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[{"name": "db-user", "image": "metadata:v2.5.0", "memory": 512}],
    )["taskDefinition"]["taskDefinitionArn"]
    return {
        "Cluster": cluster,
        "TaskDefinition": definition,
        "Subnets": [subnet],
        "SecurityGroups": [group["GroupId"]],
        "ContainerName": "db-user",
    }


def database_user_event(request_type: str, properties: dict[str, Any]) -> dict:
    return {
        **custom_resource_event(request_type),
        "LogicalResourceId": "MetaflowMetadataDatabaseUserResource",
        "ResourceType": "Custom::MetaflowDatabaseUser",
        "ResourceProperties": {"ServiceToken": "token", **properties},
        **({"PhysicalResourceId": "metaflow-db-service-user"} if request_type != "Create" else {}),
    }


@pytest.fixture
def user_handler(load_migration, monkeypatch) -> ModuleType:
    # The user's function has no MIGRATION_URL; nothing on this path reads it.
    module = load_migration("http://unused.invalid")
    monkeypatch.delenv("MIGRATION_URL")
    monkeypatch.setattr(module.database_user, "POLL_SECONDS", 0.01)
    return module


def moto_tasks() -> dict[str, Any]:
    """The tasks moto started in the cluster, by ARN."""
    return ecs_models.ecs_backends[ACCOUNT_ID][REGION].tasks.get("metadata", {})


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_runs_the_user_task_and_waits_for_it_to_succeed(
    ecs_world, user_handler, lambda_context, request_type
):
    result = user_handler.handler(database_user_event(request_type, ecs_world), lambda_context)

    ((task_arn, task),) = moto_tasks().items()
    assert result == {
        "PhysicalResourceId": "metaflow-db-service-user",
        "Data": {"TaskArn": task_arn},
    }
    # moto moves a task one state per DescribeTasks: answered only once it had STOPPED.
    assert task.last_status == "STOPPED"
    assert task.launch_type == "FARGATE"
    assert task.task_definition_arn == ecs_world["TaskDefinition"]
    assert task.network_configuration == {
        "awsvpcConfiguration": {
            "subnets": ecs_world["Subnets"],
            "securityGroups": ecs_world["SecurityGroups"],
            "assignPublicIp": "DISABLED",
        }
    }


def test_a_user_task_that_fails_fails_the_deploy(
    ecs_world, user_handler, lambda_context, monkeypatch
):
    create_container = ecs_models.Container.__init__

    def failing_container(self, task_def) -> None:
        create_container(self, task_def)
        self.exitCode = 1

    monkeypatch.setattr(ecs_models.Container, "__init__", failing_container)

    with pytest.raises(user_handler.database_user.DatabaseUserError) as error:
        user_handler.handler(database_user_event("Create", ecs_world), lambda_context)

    (task_arn,) = moto_tasks()
    assert str(error.value) == (
        f"task {task_arn} stopped with exit code 1 (stopped reason: none; container reason: "
        "none); its output is in the metadata service's log group under the db-user prefix"
    )


def test_a_user_task_still_running_at_the_deadline_fails_the_deploy(
    ecs_world, user_handler, lambda_context, monkeypatch
):
    monkeypatch.setenv("MAX_WAIT_SECONDS", "0.2")
    state_manager.set_transition(
        model_name="ecs::task", transition={"progression": "manual", "times": 10_000}
    )
    try:
        started = time.monotonic()
        with pytest.raises(user_handler.database_user.DatabaseUserTimeoutError) as error:
            user_handler.handler(database_user_event("Create", ecs_world), lambda_context)
    finally:
        state_manager.unset_transition("ecs::task")

    assert 0.2 <= time.monotonic() - started < 2
    (task_arn,) = moto_tasks()
    assert str(error.value) == f"task {task_arn} was still RUNNING after 0.2 s"


def test_the_user_task_wait_leaves_time_to_answer(ecs_world, user_handler, lambda_context):
    reserved = user_handler.database_user.RESERVED_SECONDS
    lambda_context.remaining_millis = int((reserved + 0.1) * 1000)
    state_manager.set_transition(
        model_name="ecs::task", transition={"progression": "manual", "times": 10_000}
    )
    try:
        with pytest.raises(
            user_handler.database_user.DatabaseUserTimeoutError, match=r"after 0\.1 s$"
        ):
            user_handler.handler(database_user_event("Create", ecs_world), lambda_context)
    finally:
        state_manager.unset_transition("ecs::task")


def test_a_user_resource_without_its_properties_starts_nothing(
    ecs_world, user_handler, lambda_context
):
    properties = {k: v for k, v in ecs_world.items() if k not in ("Subnets", "ContainerName")}

    with pytest.raises(ValueError, match=r"^missing ResourceProperties: Subnets, ContainerName$"):
        user_handler.handler(database_user_event("Create", properties), lambda_context)

    assert moto_tasks() == {}


def test_deleting_the_user_resource_runs_nothing(ecs_world, user_handler, lambda_context):
    result = user_handler.handler(database_user_event("Delete", ecs_world), lambda_context)

    assert result == {"PhysicalResourceId": "metaflow-db-service-user"}
    assert moto_tasks() == {}


# The script the user task runs, against a stand-in for psycopg2.


def load_user_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "metaflow_create_service_user", FOLDER / "create_service_user.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


USER_SCRIPT = load_user_script()


def test_the_password_verifier_is_the_one_rfc_7677_authenticates():
    # RFC 7677's example exchange: user "user", password "pencil".
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = USER_SCRIPT.scram_verifier("pencil", salt, 4096)
    mechanism, parameters, keys = verifier.split("$")
    assert (mechanism, parameters) == ("SCRAM-SHA-256", "4096:W22ZaJ0SNY7soEsUEjb6gQ==")
    stored_key, server_key = (base64.b64decode(key) for key in keys.split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    # The server's signature proves ServerKey; the client's proof, StoredKey.
    server_signature = hmac.digest(server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_key = bytes(
        p ^ s for p, s in zip(proof, hmac.digest(stored_key, auth_message, "sha256"), strict=True)
    )
    assert hashlib.sha256(client_key).digest() == stored_key


@dataclass
class FakeCursor:
    """Records statements; answers the two queries the script reads."""

    role_exists: bool
    master_owned: list[tuple[str, str]]
    statements: list[tuple[str, tuple | None]] = field(default_factory=list)
    _last: str = ""

    def execute(self, statement: str, parameters: tuple | None = None) -> None:
        self.statements.append((" ".join(statement.split()), parameters))
        self._last = statement

    def fetchone(self) -> tuple | None:
        assert "pg_roles" in self._last
        return (1,) if self.role_exists else None

    def fetchall(self) -> list[tuple[str, str]]:
        assert "pg_class" in self._last
        return self.master_owned

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


VERIFIER = "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5"


def test_a_new_user_gets_login_and_the_metadata_database_only():
    cursor = FakeCursor(role_exists=False, master_owned=[])

    moved = USER_SCRIPT.apply(
        cursor, service_user="metaflow_service", verifier=VERIFIER, database="metaflow"
    )

    assert moved == []
    assert cursor.statements[1:3] == [
        (
            'CREATE ROLE "metaflow_service" WITH LOGIN NOCREATEDB NOCREATEROLE PASSWORD %s',
            (VERIFIER,),
        ),
        ('GRANT CONNECT ON DATABASE "metaflow" TO "metaflow_service"', None),
    ]
    assert cursor.statements[0] == (
        "SELECT 1 FROM pg_roles WHERE rolname = %s",
        ("metaflow_service",),
    )
    assert cursor.statements[3] == (
        'GRANT USAGE, CREATE ON SCHEMA public TO "metaflow_service"',
        None,
    )
    assert len(cursor.statements) == 5  # the last one lists the master's relations


def test_an_existing_user_gets_a_new_password_and_the_masters_tables():
    cursor = FakeCursor(
        role_exists=True,
        master_owned=[("r", "flows_v3"), ("r", "goose_db_version"), ("v", "runs"), ("S", "ids")],
    )

    moved = USER_SCRIPT.apply(
        cursor, service_user="metaflow_service", verifier=VERIFIER, database="metaflow"
    )

    assert moved == ["flows_v3", "goose_db_version", "runs", "ids"]
    assert cursor.statements[1][0].startswith('ALTER ROLE "metaflow_service" WITH LOGIN')
    assert cursor.statements[5:] == [
        ('GRANT "metaflow_service" TO CURRENT_USER', None),
        ('ALTER TABLE public."flows_v3" OWNER TO "metaflow_service"', None),
        ('ALTER TABLE public."goose_db_version" OWNER TO "metaflow_service"', None),
        ('ALTER VIEW public."runs" OWNER TO "metaflow_service"', None),
        ('ALTER SEQUENCE public."ids" OWNER TO "metaflow_service"', None),
    ]


def test_no_statement_carries_the_password():
    cursor = FakeCursor(role_exists=False, master_owned=[("r", "flows_v3")])

    USER_SCRIPT.apply(cursor, service_user="metaflow_service", verifier=VERIFIER, database="mf")

    assert all(VERIFIER not in statement for statement, _ in cursor.statements)


@dataclass
class FakeConnection:
    cursor_: FakeCursor
    committed: bool = False
    closed: bool = False

    def cursor(self) -> FakeCursor:
        return self.cursor_

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        # psycopg2: a connection's block commits on success and rolls back on an error.
        self.committed = kind is None

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def user_environment(monkeypatch) -> None:
    for name, value in {
        "MF_METADATA_DB_HOST": "metaflow.cluster.example",
        "MF_METADATA_DB_PORT": "5432",
        "MF_METADATA_DB_NAME": "metaflow",
        "MF_METADATA_DB_SSL_MODE": "require",
        "MASTER_USER": "metaflow",
        "MASTER_PASSWORD": "master-secret",
        "SERVICE_USER": "metaflow_service",
        "SERVICE_PASSWORD": "service-secret",
    }.items():
        monkeypatch.setenv(name, value)


def test_the_script_connects_as_master_over_tls_and_commits(user_environment, capsys):
    connection = FakeConnection(FakeCursor(role_exists=False, master_owned=[("r", "flows_v3")]))
    seen: dict[str, Any] = {}

    def connect(**arguments: Any) -> FakeConnection:
        seen.update(arguments)
        return connection

    assert USER_SCRIPT.main(connect) == 0

    assert seen == {
        "host": "metaflow.cluster.example",
        "port": 5432,
        "dbname": "metaflow",
        "user": "metaflow",
        "password": "master-secret",
        "sslmode": "require",
        "connect_timeout": 30,
    }
    assert (connection.committed, connection.closed) == (True, True)
    (_, (verifier,)) = connection.cursor_.statements[1]
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert "service-secret" not in verifier
    assert capsys.readouterr().out == (
        "database user metaflow_service ready; ownership moved: ['flows_v3']\n"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SERVICE_USER", "metaflow", "ValueError: SERVICE_USER must not be the master user"),
        (
            "SERVICE_USER",
            'svc"; DROP ROLE x; --',
            "ValueError: SERVICE_USER 'svc\"; DROP ROLE x; --' is not a plain lower-case "
            "identifier",
        ),
    ],
)
def test_the_script_refuses_a_bad_user_and_commits_nothing(
    user_environment, monkeypatch, capsys, variable, value, message
):
    monkeypatch.setenv(variable, value)
    connection = FakeConnection(FakeCursor(role_exists=False, master_owned=[]))

    assert USER_SCRIPT.main(lambda **_: connection) == 1

    assert connection.committed is False
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_script_reports_a_database_it_cannot_reach(user_environment, capsys):
    def unreachable(**_: Any) -> None:
        raise OSError("could not connect to server: Connection refused")

    assert USER_SCRIPT.main(unreachable) == 1

    assert capsys.readouterr().err == (
        "error: OSError: could not connect to server: Connection refused\n"
    )
