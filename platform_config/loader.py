"""Loads an environment's YAML, merges a user's file over it and validates the result.

Every failure is a ConfigError whose text is one line naming the field (dotted path), the
value and what is allowed, so app.py can print it and stop before any construct exists.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from platform_config.model import FieldError, PlatformConfig

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


class ConfigError(Exception):
    """Invalid configuration; str() is a single line meant for the person who wrote it."""


def shipped_environments(config_dir: Path = SHIPPED_CONFIG_DIR) -> list[str]:
    return sorted(path.stem for path in config_dir.glob("*.yaml"))


def load_config(
    *, env: str, override_file: str | Path | None = None, config_dir: Path = SHIPPED_CONFIG_DIR
) -> PlatformConfig:
    """The validated config of shipped environment `env`, with `override_file` merged over it.

    The override is a partial document: mappings merge key by key, lists and scalars replace.
    """
    environments = shipped_environments(config_dir)
    if env not in environments:
        raise ConfigError(
            f"env = {env!r}: unknown environment; allowed: {', '.join(environments)} "
            "(or merge your own file over one with -c config=path/to/file.yaml)"
        )
    base_file = config_dir / f"{env}.yaml"
    document = _read_yaml(base_file)
    source = str(base_file.relative_to(config_dir.parent))
    if override_file is not None:
        document = _deep_merge(document, _read_yaml(Path(override_file)))
        source = f"{source} + {override_file}"
    try:
        return PlatformConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, not {type(document).__name__}"
        )
    return document


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    """One line for the first problem, with a count of any others."""
    problems = error.errors(include_url=False)
    first = problems[0]
    location: tuple[Any, ...] = tuple(first["loc"])
    value = first.get("input")
    message = first["msg"]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        # The check ran on the model at `location`; its own location is relative to that.
        location, value, message = location + cause.location, cause.value, cause.message
    elif first["type"] == "extra_forbidden":
        allowed = _allowed_keys(PlatformConfig, location[:-1])
        message = f"unknown key; allowed keys here: {', '.join(allowed)}"
    elif first["type"] == "missing":
        message = "required key is missing"
    message = message.removeprefix("Value error, ")
    path = ".".join(str(part) for part in location) or "(top level)"
    shown = "" if first["type"] == "missing" else f" = {_short_repr(value)}"
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"{path}{shown}: {message}{more}"


def _allowed_keys(model: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    for part in location:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        nested = _model_in(annotation)
        if nested is None:
            return []
        model = nested
    return sorted(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
