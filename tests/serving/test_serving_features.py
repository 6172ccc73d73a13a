"""Online features: the member's record age, read off the response path.

moto does not implement the Feature Store runtime, so the client is a real botocore client
with a Stubber: no request leaves the process, and the stub checks every parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.stub import Stubber

from jobs.batch import feature_ingestion
from serving.recommender_service.features import (
    EVENT_TIME_FEATURE,
    READ_TIMEOUT_SECONDS,
    FeatureReader,
    feature_store_client,
)

if TYPE_CHECKING:
    from serving_helpers import StartApp

GROUP = "mlp-dev-member-features"
NOW = 1_715_385_600.0
DIMENSIONS = {"ModelName": "title-recommender", "ModelVersion": "7"}


@pytest.fixture
def stubbed() -> tuple[object, Stubber]:
    client = boto3.client("sagemaker-featurestore-runtime", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def expect_get_record(stubber: Stubber, member_id: str, response: dict) -> None:
    stubber.add_response(
        "get_record",
        response,
        {
            "FeatureGroupName": GROUP,
            "RecordIdentifierValueAsString": member_id,
            "FeatureNames": [EVENT_TIME_FEATURE],
        },
    )


def test_the_event_time_feature_is_the_one_ingestion_writes() -> None:
    assert EVENT_TIME_FEATURE == feature_ingestion.EVENT_TIME_FEATURE


def test_the_age_is_now_minus_the_event_time(stubbed) -> None:
    client, stubber = stubbed
    expect_get_record(
        stubber,
        "m0",
        {"Record": [{"FeatureName": "event_time", "ValueAsString": "1715385599.999"}]},
    )
    expect_get_record(stubber, "m9", {})
    reader = FeatureReader(client=client, feature_group_name=GROUP, clock=lambda: NOW)
    assert reader.age_seconds("m0") == pytest.approx(0.001, abs=1e-6)
    assert reader.age_seconds("m9") is None


def test_the_client_tries_once_within_short_timeouts() -> None:
    config = feature_store_client("us-east-1").meta.config
    assert (config.connect_timeout, config.read_timeout) == (READ_TIMEOUT_SECONDS,) * 2
    assert config.retries["total_max_attempts"] == 1
    assert config.region_name == "us-east-1"


def test_the_app_reports_feature_age_and_failures(start_app: StartApp, stubbed) -> None:
    client, stubber = stubbed
    expect_get_record(
        stubber, "m0", {"Record": [{"FeatureName": "event_time", "ValueAsString": str(NOW - 90)}]}
    )
    expect_get_record(stubber, "m1", {})
    stubber.add_client_error("get_record", "ThrottlingException", http_status_code=400)
    reader = FeatureReader(client=client, feature_group_name=GROUP, clock=lambda: NOW)
    running = start_app(feature_reader=reader)
    plain = start_app()
    for member in ("m0", "m1", "m2"):
        assert running.recommend(member, k=2) == plain.recommend(member, k=2)
    running.drain()
    assert running.metric_values("FeatureAge", **DIMENSIONS) == [pytest.approx(90.0)]
    assert running.metric_values("FeatureRecordMissing", **DIMENSIONS) == [1.0]
    assert running.metric_values("FeatureReadError", **DIMENSIONS) == [1.0]


def test_a_feature_group_setting_creates_the_reader(start_app: StartApp) -> None:
    running = start_app(env={"FEATURE_GROUP_NAME": GROUP})
    assert isinstance(running.service._feature_reader, FeatureReader)
    assert start_app().service._feature_reader is None
