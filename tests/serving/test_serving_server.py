"""The app on a real uvicorn server on loopback, called over HTTP, then shut down."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from serving_helpers import BASE_ENVIRONMENT, HISTORIES, LOAD_TIMEOUT_SECONDS

from serving.recommender_service import healthcheck
from serving.recommender_service.app import create_app
from serving.recommender_service.server import server_config
from serving.recommender_service.settings import read_settings
from serving.recommender_service.store import InMemoryStore


class ClosingStore(InMemoryStore):
    def __init__(self) -> None:
        super().__init__(histories=HISTORIES)
        self.closed = False

    def close(self) -> None:
        self.closed = True


@contextlib.contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[int]:
    """Run ``app`` on uvicorn on 127.0.0.1 and yield its port; stop the server on exit."""
    # Port 0: the system picks a free port, read back once the server listens.
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0))
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(LOAD_TIMEOUT_SECONDS)
    assert not thread.is_alive()


def test_the_app_serves_over_http_and_shuts_down_cleanly(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, output = ClosingStore(), io.StringIO()
    environment = {
        **BASE_ENVIRONMENT,
        "MODEL_ARTIFACT_URI": str(model_dir),
        "URL_PREFIX": "/title-recommender",
    }
    app = create_app(
        read_settings(environment),
        store_factory=lambda s: store,
        metrics_stream=output,
        metrics_port=0,
    )
    with serve_in_thread(app) as port:
        assert app.state.service.wait_until_loaded(LOAD_TIMEOUT_SECONDS)
        base_url = f"http://127.0.0.1:{port}/title-recommender"
        with httpx.Client(base_url=base_url, timeout=5.0) as client:
            assert client.get("/health/ready").status_code == 200
            response = client.post("/recommendations", json={"member_id": "m0", "k": 2})
            assert response.status_code == 200
            assert [item["title_id"] for item in response.json()["items"]] == ["t4", "t1"]
            refused = client.post(
                "/recommendations", content=b"{", headers={"content-type": "application/json"}
            )
            assert refused.status_code == 422
            # The metrics are on their own port, which the load balancer does not route to.
            assert client.get("/metrics").status_code == 404
        metrics_port = app.state.metrics_server.port
        assert metrics_port != port
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0)
        assert 'recommender_requests_total{model="title-recommender",model_version="7",' in (
            scraped.text
        )
        assert healthcheck.is_ready(port, "/title-recommender")
        assert not healthcheck.is_ready(port)
        # The container's check reads the port and prefix from the task's environment.
        for name, value in {**environment, "PORT": str(port)}.items():
            monkeypatch.setenv(name, value)
        assert healthcheck.main() == 0
        monkeypatch.setenv("URL_PREFIX", "/other-model")
        assert healthcheck.main() == 1
    # Shutdown ran the queued write, closed the store, wrote the pending metrics and stopped
    # serving the Prometheus ones.
    assert store.closed
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0)
    assert [record.member_id for record in store.predictions] == ["m0"]
    assert '"Latency":[' in output.getvalue()


def test_the_health_check_fails_unless_the_service_is_ready() -> None:
    app = create_app(read_settings({}))
    with serve_in_thread(app) as port:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            assert client.get("/health/live").status_code == 200
            assert client.get("/health/ready").status_code == 503
        assert not healthcheck.is_ready(port)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    assert not healthcheck.is_ready(unused)
