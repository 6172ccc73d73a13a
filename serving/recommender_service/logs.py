"""The service's logger and how its lines look.

Log lines go to stderr; stdout carries only the metric lines (CloudWatch embedded metric
format), so the two never interleave.
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("recommender_service")


def configure_logging() -> None:
    """Send the service's INFO lines and above to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)


def one_line(exc: BaseException) -> str:
    """Return the message of ``exc`` on one line, or its type when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__
