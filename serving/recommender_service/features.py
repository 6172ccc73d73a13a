"""Online member features from SageMaker Feature Store, read to watch their freshness.

The model scores members by their learned vectors and takes no features, so features never
enter the ranking. Off the response path, the service reads the member's online record and
reports its age (now minus its ``event_time``) as the ``FeatureAge`` metric: the serving
side's view of the freshness the feature store's own alarm watches. Each read is one attempt
bounded by short connect and read timeouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

# The event-time feature of the member-features group (jobs/batch/feature_ingestion.py).
EVENT_TIME_FEATURE = "event_time"
READ_TIMEOUT_SECONDS = 0.5


class FeatureReader:
    """Reads the age of a member's online feature record."""

    def __init__(
        self, *, client: Any, feature_group_name: str, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._feature_group_name = feature_group_name
        self._clock = clock

    def age_seconds(self, member_id: str) -> float | None:
        """Return the age of the member's record, or None when the group has none for them."""
        response = self._client.get_record(
            FeatureGroupName=self._feature_group_name,
            RecordIdentifierValueAsString=member_id,
            FeatureNames=[EVENT_TIME_FEATURE],
        )
        for feature in response.get("Record", ()):
            if feature["FeatureName"] == EVENT_TIME_FEATURE:
                # The ingestion job writes event_time as epoch seconds (a Fractional feature).
                return self._clock() - float(feature["ValueAsString"])
        return None


def feature_store_client(region: str) -> Any:
    """Return a Feature Store runtime client that tries once, within the read timeout."""
    config = Config(
        connect_timeout=READ_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": 1},
    )
    return boto3.client("sagemaker-featurestore-runtime", region_name=region, config=config)
