"""Experiments and results in DynamoDB.

Experiments table (``EXPERIMENTS_TABLE``): partition key ``experiment_id`` (S), no sort key.

- An experiment item: ``experiment_id`` (S), ``surface`` (S), ``state`` (S: draft, running,
  stopped), ``version`` (N: writes so far) and ``document`` (S: the :class:`Experiment` as
  JSON, which the other attributes repeat for the keys and conditions).
- A surface claim: ``experiment_id`` = ``surface#<surface>`` (S) and ``claimed_by`` (S: the
  experiment running there). It exists exactly while an experiment runs on the surface, and
  is written in one transaction with the state change, so two experiments cannot both start
  on a surface. Claims have no ``surface`` or ``state``, so the index leaves them out.
- Global secondary index ``surface-state``: partition key ``surface`` (S), sort key
  ``state`` (S), projection ALL; it lists a surface's experiments, and its running ones.

Results table (``RESULTS_TABLE``): partition key ``experiment_id`` (S), sort key
``computed_at`` (S, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC, so text order is time order), and
``observations`` (S: what the analysis job measured, as JSON; see
:func:`ablaze.results.parse_observations`). The item with the greatest ``computed_at`` is the
current one; it is analysed when read, into a :class:`Result`.

Every write of an experiment is conditional on the version and state it was read with, so
concurrent changes cannot overwrite each other and an experiment cannot start twice.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, NoReturn

from botocore.exceptions import ClientError

from ablaze.allocation import AllocatedExperiment
from ablaze.experiments import SLUG_PATTERN, ConflictError, Experiment, State
from ablaze.results import (
    Observations,
    ObservationsMismatchError,
    Result,
    UnreadableObservationsError,
    analyse,
    observations_json,
    parse_observations,
)

SURFACE_INDEX = "surface-state"
CLAIM_PREFIX = "surface#"
COMPUTED_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
OBSERVATIONS_ATTRIBUTE = "observations"

_LOGGER = logging.getLogger(__name__)


class NotFoundError(LookupError):
    """What was asked for does not exist."""


class ExperimentNotFoundError(NotFoundError):
    """No experiment has the id."""


class ResultNotFoundError(NotFoundError):
    """No result of the experiment has been written."""


class UnusableResultError(NotFoundError):
    """The latest observations of the experiment cannot be read or do not fit it."""

    def __init__(self, *, experiment_id: str, computed_at: str, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"no usable result for {experiment_id!r} yet: the observations computed at "
            f"{computed_at} cannot be analysed: {reason}"
        )


class ExperimentExistsError(ConflictError):
    """An experiment with the id exists already."""


class ConcurrentChangeError(ConflictError):
    """The experiment changed after it was read."""


class SurfaceBusyError(ConflictError):
    """Another experiment runs on the surface."""


class ExperimentStore:
    """The experiments table, through a boto3 DynamoDB client."""

    def __init__(self, *, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def create(self, experiment: Experiment) -> None:
        """Write a new experiment; ExperimentExistsError when its id is taken."""
        try:
            self._client.put_item(
                TableName=self._table,
                Item=_item(experiment),
                ConditionExpression="attribute_not_exists(experiment_id)",
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise
            raise ExperimentExistsError(f"experiment {experiment.id!r} exists already") from None

    def get(self, experiment_id: str) -> Experiment:
        """The experiment as last written; ExperimentNotFoundError when there is none."""
        # Surface claims share the table; their ids are not slugs, so they are never found.
        if re.fullmatch(SLUG_PATTERN, experiment_id):
            item = self._client.get_item(
                TableName=self._table,
                Key={"experiment_id": {"S": experiment_id}},
                ConsistentRead=True,
            ).get("Item")
            if item is not None:
                return _experiment(item)
        raise ExperimentNotFoundError(f"no experiment {experiment_id!r}")

    def find(self, *, surface: str | None = None, state: State | None = None) -> list[Experiment]:
        """Experiments by id, optionally only those of a surface and/or in a state."""
        if surface is None:
            pages = self._client.get_paginator("scan").paginate(
                TableName=self._table,
                ConsistentRead=True,
                **_filter(state),
            )
        else:
            condition = "surface = :surface" + (" AND #state = :state" if state else "")
            values = {":surface": {"S": surface}} | ({":state": {"S": state}} if state else {})
            pages = self._client.get_paginator("query").paginate(
                TableName=self._table,
                IndexName=SURFACE_INDEX,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                **({"ExpressionAttributeNames": {"#state": "state"}} if state else {}),
            )
        experiments = [_experiment(item) for page in pages for item in page["Items"]]
        return sorted(experiments, key=lambda experiment: experiment.id)

    def running_allocations(self, surface: str) -> list[AllocatedExperiment]:
        """The running experiments of ``surface``, as the assigner's loader returns them."""
        return [e.allocation() for e in self.find(surface=surface, state="running")]

    def save(self, updated: Experiment, *, previous: Experiment) -> Experiment:
        """Write ``updated`` over ``previous`` (as read) and return it with its new version.

        Starting claims the surface, stopping releases it. Raises ConcurrentChangeError when
        the stored experiment is no longer ``previous``, SurfaceBusyError when another
        experiment runs on the surface.
        """
        written = updated.model_copy(update={"version": previous.version + 1})
        put = {
            "TableName": self._table,
            "Item": _item(written),
            "ConditionExpression": "version = :version AND #state = :state",
            "ExpressionAttributeNames": {"#state": "state"},
            "ExpressionAttributeValues": {
                ":version": {"N": str(previous.version)},
                ":state": {"S": previous.state},
            },
        }
        claim = self._claim_change(updated, previous=previous)
        try:
            if claim is None:
                self._client.put_item(**put)
            else:
                self._client.transact_write_items(TransactItems=[{"Put": put}, claim])
        except ClientError as exc:
            self._raise_conflict(exc, written)
        return written

    def _claim_change(self, updated: Experiment, *, previous: Experiment) -> dict | None:
        key = {"experiment_id": {"S": CLAIM_PREFIX + updated.surface}}
        if (previous.state, updated.state) == ("draft", "running"):
            return {
                "Put": {
                    "TableName": self._table,
                    "Item": {**key, "claimed_by": {"S": updated.id}},
                    "ConditionExpression": "attribute_not_exists(experiment_id)",
                }
            }
        if (previous.state, updated.state) == ("running", "stopped"):
            return {
                "Delete": {
                    "TableName": self._table,
                    "Key": key,
                    "ConditionExpression": "claimed_by = :id",
                    "ExpressionAttributeValues": {":id": {"S": updated.id}},
                }
            }
        return None

    def _raise_conflict(self, exc: ClientError, experiment: Experiment) -> NoReturn:
        code = _code(exc)
        reasons = [reason.get("Code") for reason in exc.response.get("CancellationReasons", [])]
        experiment_failed = code == "ConditionalCheckFailedException" or (
            code == "TransactionCanceledException" and reasons[:1] == ["ConditionalCheckFailed"]
        )
        if experiment_failed:
            raise ConcurrentChangeError(
                f"experiment {experiment.id!r} changed after it was read; read it and try again"
            ) from None
        if code == "TransactionCanceledException" and reasons[1:2] == ["ConditionalCheckFailed"]:
            holder = self._claim_holder(experiment.surface)
            raise SurfaceBusyError(
                f"surface {experiment.surface!r} runs experiment {holder!r}; stop it first "
                "(one experiment runs on a surface at a time)"
            ) from None
        raise exc

    def _claim_holder(self, surface: str) -> str | None:
        item = self._client.get_item(
            TableName=self._table,
            Key={"experiment_id": {"S": CLAIM_PREFIX + surface}},
            ConsistentRead=True,
        ).get("Item")
        return None if item is None else item["claimed_by"]["S"]


class ResultStore:
    """The results table, through a boto3 DynamoDB client."""

    def __init__(self, *, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def put(self, experiment_id: str, observations: Observations, *, computed_at: datetime) -> None:
        """Add a run's observations, as the analysis job does; they become the current ones
        unless later ones exist."""
        self._client.put_item(
            TableName=self._table,
            Item={
                "experiment_id": {"S": experiment_id},
                "computed_at": {"S": computed_at.astimezone(UTC).strftime(COMPUTED_AT_FORMAT)},
                OBSERVATIONS_ATTRIBUTE: {"S": observations_json(observations)},
            },
        )

    def latest(self, experiment: Experiment) -> Result | None:
        """The current result of the experiment, analysed from its latest observations; None
        when none were written.

        Raises :class:`UnusableResultError` (and logs it) when those observations cannot be
        read or do not fit the experiment; older ones are not used instead, since they would
        pass off a stale result as the current one.
        """
        items = self._client.query(
            TableName=self._table,
            KeyConditionExpression="experiment_id = :id",
            ExpressionAttributeValues={":id": {"S": experiment.id}},
            ScanIndexForward=False,
            Limit=1,
        )["Items"]
        if not items:
            return None
        computed_at = items[0]["computed_at"]["S"]
        try:
            computed = _computed_at(computed_at)
            observations = parse_observations(_observations_text(items[0]))
            return analyse(
                experiment,
                observations.cells,
                computed_at=computed,
                window=observations.window,
                cell_conflicts=observations.cell_conflicts,
            )
        except (UnreadableObservationsError, ObservationsMismatchError) as exc:
            error = UnusableResultError(
                experiment_id=experiment.id, computed_at=computed_at, reason=str(exc)
            )
            _LOGGER.warning("%s", error)
            raise error from None


def _observations_text(item: dict[str, dict[str, str]]) -> str:
    text = item.get(OBSERVATIONS_ATTRIBUTE, {}).get("S")
    if text is None:
        raise UnreadableObservationsError(
            f"the item has no {OBSERVATIONS_ATTRIBUTE} attribute of type S"
        )
    return text


def _computed_at(text: str) -> datetime:
    try:
        return datetime.strptime(text, COMPUTED_AT_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise UnreadableObservationsError(
            f"computed_at {text!r} is not {COMPUTED_AT_FORMAT}"
        ) from None


def _item(experiment: Experiment) -> dict[str, dict[str, str]]:
    return {
        "experiment_id": {"S": experiment.id},
        "surface": {"S": experiment.surface},
        "state": {"S": experiment.state},
        "version": {"N": str(experiment.version)},
        "document": {"S": experiment.model_dump_json()},
    }


def _experiment(item: dict[str, dict[str, str]]) -> Experiment:
    return Experiment.model_validate_json(item["document"]["S"])


def _filter(state: State | None) -> dict[str, Any]:
    """A scan filter that keeps experiments (not claims), in ``state`` when given."""
    if state is None:
        return {"FilterExpression": "attribute_exists(document)"}
    return {
        "FilterExpression": "attribute_exists(document) AND #state = :state",
        "ExpressionAttributeNames": {"#state": "state"},
        "ExpressionAttributeValues": {":state": {"S": state}},
    }


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")
