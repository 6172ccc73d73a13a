"""The container's entry point: ``python -m serving.recommender_service``.

Reads the settings from the environment and serves on all interfaces at ``PORT`` (8080 when
the settings are invalid, so the health checks can still report the service not ready).
"""

from __future__ import annotations

import os

from serving.recommender_service.app import create_app
from serving.recommender_service.logs import configure_logging
from serving.recommender_service.server import serve
from serving.recommender_service.settings import listen_port, read_settings


def main() -> None:
    configure_logging()
    settings = read_settings(os.environ)
    # The task's network namespace is the container's own; the load balancer reaches it there.
    serve(create_app(settings), host="0.0.0.0", port=listen_port(settings))


if __name__ == "__main__":
    main()
