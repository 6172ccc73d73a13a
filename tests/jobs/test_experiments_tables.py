"""Tests for jobs.experiments.tables on moto's DynamoDB: reading ABlaze's experiments table
and writing results items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from jobs.experiments.tables import (
    TableError,
    TableMissingError,
    dynamodb_client,
    read_experiments,
    write_items,
)

REGION = "eu-west-1"
EXPERIMENTS, RESULTS = "ablaze-experiments", "ablaze-results"


def document(experiment_id: str) -> str:
    return json.dumps(
        {
            "id": experiment_id,
            "state": "running",
            "cells": [{"name": "control"}, {"name": "treatment"}],
            "start": "2030-01-01T00:00:00Z",
            "end": "2030-01-15T00:00:00Z",
            "primary_metric": "play_rate",
        }
    )


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        dynamodb = dynamodb_client(REGION)
        dynamodb.create_table(
            TableName=EXPERIMENTS,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "experiment_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "experiment_id", "AttributeType": "S"}],
        )
        dynamodb.create_table(
            TableName=RESULTS,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[
                {"AttributeName": "experiment_id", "KeyType": "HASH"},
                {"AttributeName": "computed_at", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "experiment_id", "AttributeType": "S"},
                {"AttributeName": "computed_at", "AttributeType": "S"},
            ],
        )
        yield dynamodb


def put(client: Any, item: dict[str, dict[str, str]]) -> None:
    client.put_item(TableName=EXPERIMENTS, Item=item)


def test_experiments_are_read_by_id_and_claims_left_out(client: Any):
    for experiment_id in ("b-second", "a-first"):
        put(
            client,
            {"experiment_id": {"S": experiment_id}, "document": {"S": document(experiment_id)}},
        )
    put(client, {"experiment_id": {"S": "surface#homepage-row"}, "claimed_by": {"S": "a-first"}})

    scan = read_experiments(client=client, table=EXPERIMENTS)

    assert [plan.id for plan in scan.plans] == ["a-first", "b-second"]
    assert scan.skipped == []


def test_unreadable_documents_are_skipped_with_the_reason(client: Any):
    put(client, {"experiment_id": {"S": "good"}, "document": {"S": document("good")}})
    put(client, {"experiment_id": {"S": "broken"}, "document": {"S": "{"}})
    put(client, {"experiment_id": {"S": "binary"}, "document": {"B": b"{}"}})

    scan = read_experiments(client=client, table=EXPERIMENTS)

    assert [plan.id for plan in scan.plans] == ["good"]
    assert scan.skipped == [
        "experiment item 'binary': document is not a string attribute",
        "experiment item 'broken': not JSON: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)",
    ]


def test_a_missing_table_is_named(client: Any):
    with pytest.raises(TableMissingError, match=r"^table not found: nowhere$"):
        read_experiments(client=client, table="nowhere")


def test_items_are_put_into_the_results_table(client: Any):
    items = [
        {
            "experiment_id": {"S": "ranker"},
            "computed_at": {"S": at},
            "observations": {"S": "{}"},
        }
        for at in ("2030-01-02T00:00:00.000000Z", "2030-01-03T00:00:00.000000Z")
    ]

    write_items(items, client=client, table=RESULTS)

    stored = client.scan(TableName=RESULTS)["Items"]
    assert sorted(stored, key=lambda item: item["computed_at"]["S"]) == items


def test_a_failed_put_says_which_of_how_many(client: Any):
    good = {"experiment_id": {"S": "x"}, "computed_at": {"S": "t"}}
    no_sort_key = {"experiment_id": {"S": "x"}}

    with pytest.raises(TableError, match=r"^cannot put item 2 of 2 into table ablaze-results: "):
        write_items([good, no_sort_key], client=client, table=RESULTS)
    assert client.scan(TableName=RESULTS)["Count"] == 1
