"""The container health check: ``python -m ablaze.healthcheck``.

Exits 0 when ``<URL_PREFIX>/health`` on ``PORT`` answers 200 and 1 otherwise. The slim image
has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from ablaze.settings import DEFAULT_PORT

TIMEOUT_SECONDS = 2.0


def is_healthy(port: int, prefix: str = "") -> bool:
    """Whether the service on ``port`` of this host answers its health route."""
    url = f"http://127.0.0.1:{port}{prefix}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    # Read as the service reads them; a task with invalid settings never starts serving.
    port = int(os.environ.get("PORT") or DEFAULT_PORT)
    return 0 if is_healthy(port, os.environ.get("URL_PREFIX", "")) else 1


if __name__ == "__main__":
    sys.exit(main())
