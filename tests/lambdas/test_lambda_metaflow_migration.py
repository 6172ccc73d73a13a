"""The Metaflow schema migration custom resource against a local stand-in for the migration
service of netflixoss/metaflow_metadata_service, speaking its HTTP API on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType

import pytest

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
        "LogicalResourceId": "MetaflowDbMigration",
        "ResourceType": "Custom::MetaflowDbMigration",
        "ResourceProperties": {"ServiceToken": "token", "ImageTag": "2.5.0"},
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
