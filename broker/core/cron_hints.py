"""Cron schedules that are valid but probably not what their author meant.

Shoal reads schedules the way croniter does: an optional sixth field is seconds, and
it comes *last* (``"* * * * * */10"`` is every ten seconds). Quartz, Spring and many
cron libraries put seconds *first*, so ``"*/10 * * * * *"`` written in that habit is
accepted here as "every second of every tenth minute". Nothing can tell the two
apart for sure; this module only says when a schedule looks like the other habit.
"""
from __future__ import annotations

UPCOMING = 3  # fire times `shoal cron` shows per entry


def seconds_first_hint(schedule: str) -> str | None:
    """A warning when a six-field ``schedule`` looks written seconds-first, else None.

    The tell: the seconds field (the last) is ``*``, which fires every second of each
    matching minute, while the minute field (the first) is restricted. Written
    seconds-first, that first field was meant as the seconds.
    """
    fields = schedule.split()
    if len(fields) != 6 or fields[-1] != "*" or fields[0] == "*":
        return None
    meant = " ".join([*fields[1:], fields[0]])
    return (f'"{schedule}" fires every second of each minute its first field matches: in Shoal the '
            f'seconds field is the sixth (last), as in croniter; for seconds-first "{fields[0]}" write "{meant}"')
