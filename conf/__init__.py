"""Shoal's configuration: shoal.toml, the environment and flags, checked once.

``load_settings()`` returns one frozen ``Settings``; components take plain
values from it (config is constructor arguments).
"""
from __future__ import annotations

from .loader import load_settings
from .settings import (
    DEFAULT_BIND,
    DEFAULT_DATA,
    DEFAULT_GROUP,
    BrokerSettings,
    GroupSettings,
    Settings,
)

__all__ = [
    "DEFAULT_BIND",
    "DEFAULT_DATA",
    "DEFAULT_GROUP",
    "BrokerSettings",
    "GroupSettings",
    "Settings",
    "load_settings",
]
