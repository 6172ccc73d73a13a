"""The analysis job's DynamoDB reads and writes: ABlaze's experiments in, observations out.

boto3 is imported only where a client is made, so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobs.experiments.documents import ExperimentDocumentError, ExperimentPlan, parse_experiment

DOCUMENT_ATTRIBUTE = "document"
_TABLE_MISSING = "ResourceNotFoundException"


class TableError(RuntimeError):
    """A read or write of a table failed; the message is one line naming the table."""


class TableMissingError(TableError):
    """The table does not exist (in the client's account and region)."""


@dataclass(frozen=True, kw_only=True)
class ExperimentScan:
    """The experiments read from the table, and a one-line reason for each item skipped."""

    plans: list[ExperimentPlan]
    skipped: list[str]


def read_experiments(*, client: Any, table: str) -> ExperimentScan:
    """Every experiment of ABlaze's experiments table, by id; surface claims (items without
    a document) are left out, and documents the job cannot read are skipped with the reason."""
    from botocore.exceptions import BotoCoreError, ClientError

    plans, skipped = [], []
    pages = client.get_paginator("scan").paginate(
        TableName=table, FilterExpression=f"attribute_exists({DOCUMENT_ATTRIBUTE})"
    )
    try:
        items = [item for page in pages for item in page["Items"]]
    except (BotoCoreError, ClientError) as exc:
        raise _table_error(exc, table=table, action="scan") from None
    for item in sorted(items, key=_item_id):
        try:
            plans.append(parse_experiment(_document(item)))
        except ExperimentDocumentError as exc:
            skipped.append(f"experiment item {_item_id(item)!r}: {exc}")
    return ExperimentScan(plans=plans, skipped=skipped)


def write_items(items: Sequence[dict[str, Any]], *, client: Any, table: str) -> None:
    """Put each item into ``table``; the items before a failed put stay written."""
    from botocore.exceptions import BotoCoreError, ClientError

    for written, item in enumerate(items):
        try:
            client.put_item(TableName=table, Item=item)
        except (BotoCoreError, ClientError) as exc:
            raise _table_error(
                exc, table=table, action=f"put item {written + 1} of {len(items)} into"
            ) from None


def dynamodb_client(region: str) -> Any:
    """A DynamoDB client for ``region`` that retries throttling and server errors."""
    import boto3
    from botocore.config import Config

    return boto3.client("dynamodb", region_name=region, config=Config(retries={"mode": "standard"}))


def _document(item: dict[str, Any]) -> str:
    document = item[DOCUMENT_ATTRIBUTE].get("S")
    if document is None:
        raise ExperimentDocumentError("document is not a string attribute")
    return document


def _item_id(item: dict[str, Any]) -> str:
    return item.get("experiment_id", {}).get("S", "")


def _table_error(exc: Exception, *, table: str, action: str) -> TableError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code == _TABLE_MISSING:
        return TableMissingError(f"table not found: {table}")
    message = " ".join(str(exc).split()) or type(exc).__name__
    return TableError(f"cannot {action} table {table}: {message}")
