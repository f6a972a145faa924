"""Every key shoal.toml knows, and how each value is checked and converted.

A checker takes the raw TOML value and returns what goes into the settings
dataclass, or raises ``Invalid`` saying what was expected and what was found.
Where the value came from (file and line, environment, flag) is added by the
loader, which knows it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .durations import DURATION_HINT, MIB, bytes_to_mib, parse_duration, parse_size

Checker = Callable[[object], object]


class Invalid(ValueError):
    """A value that does not fit its key; the loader prefixes where it was found."""

    def __init__(self, expected: str, found: object, reason: str | None = None) -> None:
        because = f": {reason}" if reason else ""  # e.g. which cron field is wrong
        super().__init__(f"expected {expected}, found {describe(found)}{because}")


def describe(value: object) -> str:
    """A found value as the user wrote it in TOML: strings quoted, ``true``, ``a table``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (str, list)):
        try:
            shown = json.dumps(value, ensure_ascii=False)
        except TypeError:  # an array holding dates or tables
            return "an array"
        return shown if len(shown) <= 60 else shown[:57] + "..."
    return str(value)


def integer(minimum: int, maximum: int | None = None) -> Checker:
    """A checker for a TOML integer within ``minimum..maximum``."""
    if maximum is None:
        expected = f"an integer >= {minimum}"
    else:
        expected = f"an integer from {minimum} to {maximum}"

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(expected, value)
        if value < minimum or (maximum is not None and value > maximum):
            raise Invalid(expected, value)
        return value

    return check


def duration(*, positive: bool, at_most: float | None = None, expected: str | None = None) -> Checker:
    """A checker for a duration in seconds; ``positive`` rules out zero as well as negatives,
    ``at_most`` bounds it above, and ``expected`` (when given) is what every refusal says."""
    expected_range = expected or ("a duration > 0" if positive else "a duration >= 0")
    hint = expected or DURATION_HINT

    def check(value: object) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise Invalid(hint, value) from None
        if seconds < 0 or (positive and seconds == 0) or (at_most is not None and seconds > at_most):
            raise Invalid(expected_range, value)
        return seconds

    return check


# ``[broker] spin``: how long the loop polls without sleeping, 0 (never) up to 10 ms: past that
# it would only burn a core the workers need.
spin_duration = duration(positive=False, at_most=0.01, expected='a duration from 0 to 10ms, like "0.5ms"')


def size_mib(*, minimum: int = 0) -> Checker:
    """A checker for a size stored in whole MiB; a bare integer already counts MiB."""
    expected = 'a size like "512MiB", "1GB" or a whole number of MiB'
    if minimum:
        expected += f" (at least {minimum} MiB)"

    def check(value: object) -> int:
        try:
            mib = bytes_to_mib(parse_size(value, bare_unit=MIB))
        except ValueError:
            raise Invalid(expected, value) from None
        if mib < minimum:
            raise Invalid(expected, value)
        return mib

    return check


def size_bytes(*, minimum: int) -> Checker:
    """A checker for a size stored in bytes; a bare integer counts bytes."""
    expected = f'a size like "16MiB" or a number of bytes >= {minimum}'

    def check(value: object) -> int:
        try:
            size = parse_size(value, bare_unit=1)
        except ValueError:
            raise Invalid(expected, value) from None
        if size < minimum:
            raise Invalid(expected, value)
        return size

    return check


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def rate(value: object) -> float:
    """A rate like ``"100/s"``, ``"20/m"``, ``"5/h"`` (or a number per second); 0 means no limit."""
    expected = 'a rate like "100/s", "20/m" or "5/h"'
    if isinstance(value, bool):
        raise Invalid(expected, value)
    if isinstance(value, (int, float)):
        if value < 0:
            raise Invalid(expected, value)
        return float(value)
    if isinstance(value, str):
        found = _RATE.match(value)
        if found:
            return float(found.group(1)) / _RATE_UNITS[found.group(2)]
    raise Invalid(expected, value)


def host_port(value: object) -> str:
    """``host:port`` for an HTTP listener (empty: off)."""
    if isinstance(value, str) and (value == "" or re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", value)):
        return value
    raise Invalid('"host:port" such as "127.0.0.1:9464"', value)


def boolean(value: object) -> bool:
    """Check a TOML boolean (``true``/``false``, not 1 or "yes": TOML has real booleans)."""
    if not isinstance(value, bool):
        raise Invalid("true or false", value)
    return value


def text(value: object) -> str:
    """Check a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a non-empty string", value)
    return value


def choice(*options: str) -> Checker:
    """A checker for one of a fixed set of strings."""
    expected = "one of " + ", ".join(f'"{option}"' for option in options)

    def check(value: object) -> str:
        if value not in options:
            raise Invalid(expected, value)
        return str(value)

    return check


def anything(value: object) -> object:
    """Accept any TOML value as it is (a cron payload is the workflow's business)."""
    return value


def cron_schedule(value: object) -> str:
    """Check a cron expression the way the broker will read it (croniter, optional seconds last)."""
    # Imported here: croniter costs ~50 ms, which a config without [cron] should not pay.
    from shoal.broker.core.cron_checks import SCHEDULE_HINT, schedule_problem

    if not isinstance(value, str):
        raise Invalid(SCHEDULE_HINT, value)
    problem = schedule_problem(value)
    if problem is not None:
        raise Invalid(SCHEDULE_HINT, value, problem)
    return value


def time_zone(value: object) -> str:
    """Check an IANA time zone name against this host's time zone database."""
    from shoal.broker.core.cron_checks import ZONE_HINT, zone_problem  # lazily, as above

    if not isinstance(value, str):
        raise Invalid(ZONE_HINT, value)
    problem = zone_problem(value)
    if problem is not None:
        raise Invalid(ZONE_HINT, value, problem)
    return value


_ENDPOINT_RE = re.compile(r"^(tcp|ipc|inproc|pgm|epgm|ws|wss|tipc|vmci|udp)://\S+$")


def endpoint(value: object) -> str:
    """Check a ZeroMQ endpoint: a transport, "://", and an address."""
    if not isinstance(value, str) or not _ENDPOINT_RE.match(value):
        raise Invalid('a ZeroMQ endpoint like "tcp://127.0.0.1:5555"', value)
    return value


def modules(value: object) -> tuple[str, ...]:
    """Check ``app``: a module name, "a,b" comma-separated names, or an array of names."""
    expected = 'a module name like "myapp.workflows", "a,b" or an array of module names'
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = value
    else:
        raise Invalid(expected, value)
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise Invalid(expected, value)
    return tuple(names)


# --- text from the environment and flags --------------------------------------
def _int_text(raw: str) -> object:
    """Read "20" as 20; anything else goes on unchanged for the checker to reject by name."""
    try:
        return int(raw.strip())
    except ValueError:
        return raw


_TRUE_WORDS = {"1", "true", "yes", "on"}
_FALSE_WORDS = {"0", "false", "no", "off"}


def _bool_text(raw: str) -> object:
    """Read the usual spellings of yes and no; anything else goes on unchanged."""
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return raw


def _as_is(raw: str) -> object:
    return raw


@dataclass(frozen=True)
class Key:
    """One setting: the dataclass field it fills, its checker, and how text (env, flags) is read."""

    field: str
    check: Checker
    from_text: Callable[[str], object] = _as_is


# The TOML names are what users see (in errors, sources and --show); the field
# names carry the units, as the style guide wants for code.
GROUP_KEYS: dict[str, Key] = {
    "app": Key("app", modules),
    "workers": Key("workers", integer(0), _int_text),
    "max_workers": Key("max_workers", integer(1), _int_text),
    "concurrency": Key("concurrency", integer(1), _int_text),
    "retries": Key("retries", integer(0), _int_text),
    "backoff": Key("backoff_s", duration(positive=False)),
    "backoff_max": Key("backoff_max_s", duration(positive=False)),
    "idle_timeout": Key("idle_timeout_s", duration(positive=False)),
    "lease": Key("lease_s", duration(positive=True)),
    "grace": Key("grace_s", duration(positive=False)),
    "timeout": Key("timeout_s", duration(positive=False)),
    "nice": Key("nice", integer(-20, 19), _int_text),
    "max_jobs": Key("max_jobs", integer(0), _int_text),
    "max_memory": Key("max_memory_mb", size_mib()),
    "retention": Key("retention_s", duration(positive=False)),
    "rate": Key("rate_per_s", rate),
    "max_pending": Key("max_pending", integer(0), _int_text),
    "starvation": Key("starvation_s", duration(positive=True)),
}

BROKER_KEYS: dict[str, Key] = {
    "bind": Key("bind", endpoint),
    "data": Key("data", text),
    "max_message_bytes": Key("max_message_bytes", size_bytes(minimum=1), _int_text),
    "max_step_bytes": Key("max_step_bytes", size_bytes(minimum=1), _int_text),
    "heartbeat_interval": Key("heartbeat_interval_s", duration(positive=True)),
    "map_size": Key("map_size_mb", size_mib(minimum=1), _int_text),
    "max_size": Key("max_size_mb", size_mib(minimum=0), _int_text),
    "min_free_disk": Key("min_free_disk_mb", size_mib(minimum=0), _int_text),
    "snapshot_interval": Key("snapshot_interval_s", duration(positive=True)),
    "snapshot_entries": Key("snapshot_entries", integer(1), _int_text),
    "snapshot_keep": Key("snapshot_keep", integer(1), _int_text),
    "supervise": Key("supervise", boolean, _bool_text),
    "write_ahead": Key("write_ahead", boolean, _bool_text),
    "spin": Key("spin_s", spin_duration),
    "events": Key("events", endpoint),
    "metrics": Key("metrics", host_port),
    "metrics_token": Key("metrics_token", text),
    "insecure": Key("insecure", boolean, _bool_text),
}

# [security]: paths to CURVE certificates (shoal keygen) and to directories of public ones.
# Whether the files exist is checked where they are used: one shoal.toml may serve the
# broker's host and the clients' hosts, and each has only its own keys.
SECURITY_KEYS: dict[str, Key] = {
    "broker_secret_key": Key("broker_secret_key", text),
    "clients": Key("clients", text),
    "admins": Key("admins", text),
    "key": Key("key", text),
    "broker_public_key": Key("broker_public_key", text),
}

# Cron schedules and zones are checked by the rules shoal.broker.core.crontab applies,
# so a schedule that loads is one the broker can run. Absent optional keys get
# these values, so every stored entry has the same shape.
CRON_KEYS: dict[str, Checker] = {
    "workflow": text,
    "schedule": cron_schedule,
    "payload": anything,
    "group": text,
    "timezone": time_zone,
    "enabled": boolean,
    "catch_up": choice("none", "one", "all"),
}
CRON_REQUIRED: tuple[str, ...] = ("workflow", "schedule")
CRON_DEFAULTS: dict[str, object] = {
    "payload": None,
    "group": None,
    "timezone": None,
    "enabled": True,
    "catch_up": "one",  # after downtime, one run stands for the missed ticks (issue 5)
}
