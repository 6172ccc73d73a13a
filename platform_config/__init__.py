"""Typed, validated configuration of the platform (see config/*.yaml)."""

from platform_config.loader import ConfigError, load_config, shipped_environments
from platform_config.model import PlatformConfig

__all__ = ["ConfigError", "PlatformConfig", "load_config", "shipped_environments"]
