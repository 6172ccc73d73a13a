"""The service's settings, read once at start-up from environment variables.

Each field is the lower-case name of its variable (``EXPERIMENTS_TABLE`` ->
``experiments_table``); a variable that is empty counts as unset. :func:`load_settings`
raises :class:`SettingsError` with one line naming each bad variable and what it allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PORT = 8080

TableName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{3,255}$")]


class SettingsError(ValueError):
    """Invalid settings; the message is one line naming the variables and what they allow."""


class Settings(BaseModel):
    """The validated environment of the service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiments_table: TableName
    results_table: TableName
    aws_region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")]
    # The model package group whose approved versions experiment cells may name.
    model_package_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9](-*[A-Za-z0-9]){0,62}$")]
    # The path every route is under, e.g. /ablaze behind a load balancer rule that forwards
    # /ablaze/* without stripping it.
    url_prefix: Annotated[str, Field(pattern=r"^(/[A-Za-z0-9._~-]+)*$", max_length=256)] = ""
    port: Annotated[int, Field(ge=1, le=65_535)] = DEFAULT_PORT


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Validate the variables of ``environ`` that name a field of :class:`Settings`."""
    values = {
        name: environ[name.upper()]
        for name in Settings.model_fields
        if environ.get(name.upper(), "").strip()
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(error, values) for error in exc.errors())) from None


def _describe(error: Mapping, values: Mapping[str, str]) -> str:
    field = str(error["loc"][0])
    variable = field.upper()
    if field not in values:
        return f"{variable} is required"
    return f"{variable}={values[field]!r}: {error['msg']}"
