"""How the app runs under uvicorn, shared by the container's entry point and the benchmark."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

# ECS waits 30 s after SIGTERM by default; requests in flight and queued writes finish first.
GRACEFUL_SHUTDOWN_SECONDS = 20


def server_config(app: FastAPI, *, host: str, port: int) -> uvicorn.Config:
    """Return the uvicorn configuration: no access log (the load balancer keeps one)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run the app until the process is told to stop."""
    uvicorn.Server(server_config(app, host=host, port=port)).run()
