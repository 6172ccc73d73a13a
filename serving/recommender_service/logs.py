"""The service's logger and how its lines look.

Log lines go to stderr; stdout carries only the metric lines (CloudWatch embedded metric
format), so the two never interleave.
"""

from __future__ import annotations

import logging
import sys

from ablaze.allocation import LOGGER as ABLAZE_LOGGER

LOGGER = logging.getLogger("recommender_service")


def configure_logging() -> None:
    """Send the INFO lines and above of the service and of ABlaze's assigner to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for logger in (LOGGER, ABLAZE_LOGGER):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def one_line(exc: BaseException) -> str:
    """Return the message of ``exc`` on one line, or its type when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__
