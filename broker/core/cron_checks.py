"""Is a cron schedule (or time zone) usable? The checks config and the core share, and the one
way both build a croniter.

Schedules are croniter's: 5 fields, or 6 where the sixth, last, is seconds (``shoal.broker.core.crontab``
explains the rest).
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped, unused-ignore]  # no stubs

SCHEDULE_HINT = "a cron expression (5 fields, or 6 with seconds)"
ZONE_HINT = 'an IANA time zone like "Europe/Paris" or "UTC"'
# Field order with croniter's second_at_beginning=False: seconds, when given, come last.
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week", "second")
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# A fixed start for config checks, so whether a schedule "ever fires" does not depend on today.
CHECK_FROM = datetime(2000, 1, 1, tzinfo=timezone.utc)


def schedule_problem(schedule: str) -> str | None:
    """Why ``schedule`` is not a usable cron expression, or None when it is.

    The reason comes from croniter, narrowed to the field at fault when one is.
    """
    fields = schedule.split()
    if not fields:
        return "it is empty"
    if fields[0].startswith("@"):
        if fields[0].lower() not in _ALIASES:
            return f"unknown alias; expected one of {', '.join(_ALIASES)}"
        return None if len(fields) == 1 else "an alias such as @daily stands alone"
    if len(fields) not in (5, 6):
        return f"it has {len(fields)} fields"
    try:
        ticks = croniter_for(schedule, CHECK_FROM, "check")
    except Exception as exc:  # croniter raises more than CroniterError on odd input
        return _field_at_fault(fields) or _reason(exc)
    try:
        ticks.get_next(float)
    except CroniterBadDateError:
        return "no date ever matches it"
    return None


def zone_problem(name: str) -> str | None:
    """Why ``name`` is not a time zone this host knows, or None when it is."""
    try:
        ZoneInfo(name)
    except ZoneInfoNotFoundError:
        return "no such zone in the time zone database"
    except (ValueError, OSError):  # "../x", "", or a directory such as "Europe"
        return "not a zone name"
    return None


def _field_at_fault(fields: list[str]) -> str | None:
    # croniter names the whole expression; trying each field alone among stars says which one.
    for index, value in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[index] = value
        try:
            croniter_for(" ".join(probe), CHECK_FROM, "check")
        except Exception as exc:  # as above
            return f'the {_FIELD_NAMES[index]} field "{value}" {_reason(exc)}'
    return None


def _reason(exc: Exception) -> str:
    # croniter starts with "[<expression>] ", which the caller already shows.
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc)).strip()
    return text or type(exc).__name__


def croniter_for(schedule: str, start: datetime, hash_id: str) -> croniter:
    # With a hash_id croniter reads "@daily" as "H H * * *" (some hashed time of day),
    # not midnight; so aliases get none, and keep their plain meaning.
    hashed = None if schedule.lstrip().startswith("@") else hash_id.encode()
    return croniter(schedule, start, hash_id=hashed, second_at_beginning=False)
