"""The container health check: ``python -m serving.recommender_service.healthcheck``.

Exits 0 when ``<URL_PREFIX>/health/ready`` on ``PORT`` answers 200 and 1 otherwise, so a
task whose model cannot be loaded is reported unhealthy and replaced. The slim image has no
curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from serving.recommender_service.settings import Settings, listen_port, read_settings

TIMEOUT_SECONDS = 2.0


def is_ready(port: int, prefix: str = "") -> bool:
    """Whether the service on ``port`` of this host reports itself ready."""
    url = f"http://127.0.0.1:{port}{prefix}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    settings = read_settings(os.environ)
    prefix = settings.url_prefix if isinstance(settings, Settings) else ""
    return 0 if is_ready(listen_port(settings), prefix) else 1


if __name__ == "__main__":
    sys.exit(main())
