"""Cron: which scheduled ticks fire now, decided without any I/O.

The broker owns the clock and the storage; this module only answers "given the
time now and the tick each entry last fired, what fires?" (``CronSchedule.plan``
and ``due``) and "when must I look again?" (``next_due_ms``). Times are Unix
milliseconds of the wall clock (cron is about what a person reads on a clock).

Schedules
    croniter syntax in 5 fields, or 6 where the sixth, last, is seconds:
    ``"* * * * * */5"`` fires every five seconds (``"*/5 * * * * *"`` is every
    second of every fifth minute). croniter's seventh "year" field is refused.
    ``H`` hashes on the entry's name, so it is stable per entry. Each entry
    is evaluated in its ``timezone`` (IANA name, default UTC) with tz-aware
    datetimes, so "0 9 * * *" in Europe/Paris is 09:00 Paris time on both
    sides of a DST change. DST edges are croniter's: a time skipped by a
    spring-forward fires at the first valid time after the gap, and a wall time
    that happens twice in the autumn fires twice for an hourly-or-finer
    schedule and (croniter's choice) for a daily one too.

The last fired tick
    ``last_fired[name]`` is the tick (ms) an entry last fired; the broker
    stores it in the same LMDB transaction as the job that tick enqueued, and
    that job's id is ``cron_job_id(name, tick_ms)``, so replaying a tick after a
    crash cannot create a second job. Only ticks strictly after it can fire.

First seen
    An entry absent from ``last_fired`` has never been seen: nothing fires for
    it, and ``plan().first_seen`` maps it to ``now_ms``, which the broker must
    store as its ``last_fired``. So a brand-new entry never fires for the past:
    its first tick is the first one after the broker first saw it. (If the
    broker forgot to store it, the entry would be "first seen" again on every
    call and never fire.)

Catch-up after downtime (``catch_up``)
    The ticks in ``(last_fired, now]`` are the ones not fired yet. While the
    broker runs there is one, a few milliseconds late; after downtime there
    may be many.

    ``"one"`` (default)
        Fire only the newest of them: one run stands for all that were missed.
    ``"all"``
        Fire each of them, oldest first, but at most ``MAX_CATCH_UP`` (the
        newest ones); the older ones are reported in ``plan().skipped`` with
        ``capped=True`` so the broker can warn.
    ``"none"``
        Fire the newest of them only if it is on time, that is less than
        ``on_time_ms`` (default ``ON_TIME_MS``, 10 s) old; anything older was
        missed and is dropped. Nothing is stored for a dropped tick: the next
        regular tick is on time when it comes, fires, and moves ``last_fired``
        past the whole gap. So a broker restarted 3 s after a tick still runs
        it; one restarted an hour later waits for the next tick.

    Under every policy a tick that is not fired is never fired later, because
    ``last_fired`` moves past it as soon as a newer tick fires.

Disabled entries
    never fire, and ``plan`` leaves their ``last_fired`` alone. Like a
    suspended Kubernetes CronJob, an entry enabled again treats the ticks it
    missed while disabled as missed ticks, and ``catch_up`` applies to them.

Clock steps
    If the wall clock goes back, ``last_fired`` may lie in the future. Nothing
    fires until the clock passes it again, so no tick runs twice.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError  # type: ignore[import-untyped, unused-ignore]  # no stubs

from .cron_checks import CHECK_FROM, croniter_for, schedule_problem, zone_problem
from .cron_hints import UPCOMING, seconds_first_hint

CATCH_UP_POLICIES = ("none", "one", "all")
MAX_CATCH_UP = 1000     # runs "all" fires for one entry at once: a long outage must not flood a group
ON_TIME_MS = 10_000     # "none": a tick this late was missed, not merely delayed by a busy loop


@dataclass(frozen=True)
class CronEntry:
    """One ``[cron.<name>]`` table: what to enqueue, and when."""

    name: str
    workflow: str
    schedule: str
    payload: Any = None
    group: str | None = None
    timezone: str | None = None   # IANA name; None is UTC
    enabled: bool = True
    catch_up: str = "one"         # "none" | "one" | "all"; see the module docstring


@dataclass(frozen=True)
class Skipped:
    """Ticks of one entry that will never run, for the broker to log."""

    name: str
    after_ms: int      # the skipped ticks lie strictly between these two times
    before_ms: int
    count: int         # how many; a lower bound when ``exact`` is False
    exact: bool        # False when counting stopped at MAX_CATCH_UP, to bound the work
    capped: bool       # True when "all" hit MAX_CATCH_UP: worth a warning, not routine


@dataclass(frozen=True)
class CronPlan:
    """What the broker does now: enqueue ``fire``, store ``first_seen``, log ``skipped``."""

    fire: list[tuple[CronEntry, int]] = field(default_factory=list)   # (entry, tick_ms), oldest first
    skipped: list[Skipped] = field(default_factory=list)
    first_seen: dict[str, int] = field(default_factory=dict)          # name -> now_ms, store as last_fired


def cron_job_id(name: str, tick_ms: int) -> bytes:
    """The id of the job one tick of an entry enqueues: the same inputs, the same 16 bytes.

    Laid out like client job ids (``shoal.ids``: 48-bit Unix ms first, so ids
    sort by time), with version 8 ("derived, not random") and 74 bits of a hash
    of the name and tick where the random bits would be. Deterministic, so the
    broker's dedup by id makes a replayed tick enqueue nothing.
    """
    if not 0 <= tick_ms < 1 << 48:
        raise ValueError(f"tick_ms out of range for a job id: {tick_ms}")
    raw_name = name.encode()
    digest = hashlib.blake2b(
        len(raw_name).to_bytes(4, "big") + raw_name + tick_ms.to_bytes(8, "big"),
        digest_size=10,
        person=b"shoal-cron",
    ).digest()
    hashed = int.from_bytes(digest, "big")          # 80 bits; 74 are used
    high12, low62 = (hashed >> 62) & 0xFFF, hashed & ((1 << 62) - 1)
    value = (tick_ms << 80) | (0x8 << 76) | (high12 << 64) | (0b10 << 62) | low62
    return value.to_bytes(16, "big")


def entries_from_settings(cron: Mapping[str, Mapping[str, Any]]) -> list[CronEntry]:
    """``Settings.cron`` (name -> checked table, defaults filled in) as entries, in file order."""
    return [
        CronEntry(
            name=name,
            workflow=str(table["workflow"]),
            schedule=str(table["schedule"]),
            payload=table.get("payload"),
            group=table.get("group"),
            timezone=table.get("timezone"),
            enabled=bool(table.get("enabled", True)),
            catch_up=str(table.get("catch_up", "one")),
        )
        for name, table in cron.items()
    ]


class _Ticks:
    """One entry's schedule as Unix-ms ticks, with recent look-ups remembered.

    A look-up at ``ms`` yields the bracket ``(newest tick <= ms, first tick > ms)``,
    which answers every later look-up that falls inside it. The broker asks
    about the same two instants (``last_fired`` and now) over and over, so in
    steady state no croniter call is made at all.
    """

    _KEEP = 4  # brackets remembered: last_fired's, now's, and a little slack

    def __init__(self, entry: CronEntry) -> None:
        self.zone = ZoneInfo(entry.timezone or "UTC")
        self._iter = croniter_for(entry.schedule, CHECK_FROM, entry.name)  # moved before each use
        self._brackets: list[tuple[int | None, int | None]] = []

    def at_or_before(self, ms: int) -> int | None:
        """The newest tick at or before ``ms``; None if croniter finds none."""
        return self._bracket(ms)[0]

    def after(self, ms: int) -> int | None:
        """The first tick strictly after ``ms``; None if croniter finds none."""
        return self._bracket(ms)[1]

    def _bracket(self, ms: int) -> tuple[int | None, int | None]:
        for low, high in self._brackets:
            if (low is None or low <= ms) and (high is None or ms < high):
                return low, high
        bracket = (self._step(ms + 1, forward=False), self._step(ms, forward=True))
        self._brackets = [bracket, *self._brackets[: self._KEEP - 1]]
        return bracket

    def _step(self, ms: int, *, forward: bool) -> int | None:
        # croniter steps strictly away from its start: next > ms, prev < ms (hence ms + 1 above).
        self._iter.set_current(datetime.fromtimestamp(ms / 1000, self.zone), force=True)
        try:
            found: datetime = self._iter.get_next(datetime) if forward else self._iter.get_prev(datetime)
        except CroniterBadDateError:
            return None
        return round(found.timestamp() * 1000)  # whole seconds: exact as a float

    def newest_between(self, after_ms: int, upto_ms: int, limit: int) -> list[int]:
        """Up to ``limit`` ticks in ``(after_ms, upto_ms]``, newest first."""
        found: list[int] = []
        tick = self.at_or_before(upto_ms)
        while tick is not None and tick > after_ms and len(found) < limit:
            found.append(tick)
            tick = self._step(tick, forward=False)
        return found

    def count_between(self, after_ms: int, before_ms: int, limit: int) -> tuple[int, bool]:
        """How many ticks lie in ``(after_ms, before_ms)``, counting at most ``limit``; and if exact."""
        first = self.after(after_ms)
        if first is None or first >= before_ms:  # the usual case: none, and no walk needed
            return 0, True
        found = self.newest_between(after_ms, before_ms - 1, limit + 1)
        return min(len(found), limit), len(found) <= limit


class CronSchedule:
    """The configured cron entries; decides which ticks fire, holds no fired state.

    ``last_fired`` is always passed in (the broker keeps it in LMDB), so the
    same arguments give the same answer; the only memory is a cache of tick
    look-ups.
    """

    def __init__(self, entries: list[CronEntry], *, on_time_ms: int = ON_TIME_MS) -> None:
        """Check every entry; a bad one raises ValueError naming it."""
        if on_time_ms <= 0:
            raise ValueError(f"on_time_ms must be > 0, not {on_time_ms}")
        self.entries = list(entries)
        self.on_time_ms = on_time_ms
        self._ticks: dict[str, _Ticks] = {}
        for entry in self.entries:
            problem = _entry_problem(entry)
            if entry.name in self._ticks:
                problem = "defined twice"
            if problem is not None:
                raise ValueError(f"cron.{entry.name}: {problem}")
            self._ticks[entry.name] = _Ticks(entry)

    def plan(self, now_ms: int, last_fired: Mapping[str, int]) -> CronPlan:
        """Everything due now: ticks to fire, entries first seen, ticks skipped for good."""
        fire: list[tuple[CronEntry, int]] = []
        skipped: list[Skipped] = []
        first_seen: dict[str, int] = {}
        for entry in self.entries:
            if not entry.enabled:
                continue
            since_ms = last_fired.get(entry.name)
            if since_ms is None:
                first_seen[entry.name] = now_ms
                continue
            ticks, dropped = self._entry_due(entry, since_ms, now_ms)
            fire.extend((entry, tick) for tick in ticks)
            if dropped is not None:
                skipped.append(dropped)
        fire.sort(key=lambda pair: (pair[1], pair[0].name))
        return CronPlan(fire, skipped, first_seen)

    def due(self, now_ms: int, last_fired: Mapping[str, int]) -> list[tuple[CronEntry, int]]:
        """Ticks to fire now as ``(entry, tick_ms)``, oldest first; ``plan().fire``.

        ``catch_up`` applies as the module docstring says; an entry absent
        from ``last_fired`` fires nothing (store ``plan().first_seen``).
        """
        return self.plan(now_ms, last_fired).fire

    def next_due_ms(self, now_ms: int, last_fired: Mapping[str, int]) -> int | None:
        """When the broker must call ``due`` again: the earliest time >= ``now_ms`` at
        which it returns something, given the same ``last_fired``; None if never.

        ``now_ms`` itself when ticks are due already.
        """
        soonest: int | None = None
        for entry in self.entries:
            if entry.enabled:
                next_ms = self._entry_next(entry, last_fired.get(entry.name, now_ms), now_ms)
                if next_ms is not None and (soonest is None or next_ms < soonest):
                    soonest = next_ms
        return soonest

    def listing(self, now_ms: int, last_fired: Mapping[str, int]) -> list[dict[str, Any]]:
        """One row per entry for ``shoal cron``, in config order.

        ``last_ms`` is the last tick fired, or None when the stored value is not
        a tick of the schedule (the first-seen mark of an entry that never
        fired, or a schedule changed since). ``next_ms`` is when it fires next
        (``now_ms`` if it is due), None when disabled or never; ``upcoming_ms``
        holds it and the ticks after it (up to ``UPCOMING``, empty when disabled);
        ``warning`` says when the schedule looks written seconds-first, else None.
        """
        rows = []
        for entry in self.entries:
            ticks = self._ticks[entry.name]
            stored = last_fired.get(entry.name)
            next_ms = self._entry_next(entry, stored if stored is not None else now_ms, now_ms)
            upcoming = [next_ms] if entry.enabled and next_ms is not None else []
            while upcoming and len(upcoming) < UPCOMING:
                later = ticks.after(upcoming[-1])
                if later is None:
                    break
                upcoming.append(later)
            rows.append({
                "name": entry.name,
                "workflow": entry.workflow,
                "group": entry.group,
                "schedule": entry.schedule,
                "timezone": entry.timezone or "UTC",
                "enabled": entry.enabled,
                "catch_up": entry.catch_up,
                "last_ms": stored if stored is not None and ticks.at_or_before(stored) == stored else None,
                "next_ms": next_ms if entry.enabled else None,
                "upcoming_ms": upcoming,
                "warning": seconds_first_hint(entry.schedule),
            })
        return rows

    def _entry_due(self, entry: CronEntry, since_ms: int, now_ms: int) -> tuple[list[int], Skipped | None]:
        """The ticks of one entry to fire now, and the missed ones dropped with them."""
        ticks = self._ticks[entry.name]
        newest = ticks.at_or_before(now_ms)
        if newest is None or newest <= since_ms:
            return [], None
        if entry.catch_up == "none" and newest <= now_ms - self.on_time_ms:
            return [], None  # missed, not late: wait for the next regular tick
        if entry.catch_up == "all":
            recent = ticks.newest_between(since_ms, now_ms, MAX_CATCH_UP + 1)
            fire = sorted(recent[:MAX_CATCH_UP])
            capped = len(recent) > MAX_CATCH_UP
        else:
            fire, capped = [newest], False
        count, exact = ticks.count_between(since_ms, fire[0], MAX_CATCH_UP)
        if count == 0:
            return fire, None
        return fire, Skipped(entry.name, since_ms, fire[0], count, exact, capped)

    def _entry_next(self, entry: CronEntry, since_ms: int, now_ms: int) -> int | None:
        # Mirrors _entry_due: "none" can only fire a tick newer than both since_ms and
        # now - on_time; the others fire any tick after since_ms, at once if it is past.
        horizon_ms = since_ms
        if entry.catch_up == "none":
            horizon_ms = max(since_ms, now_ms - self.on_time_ms)
        next_ms = self._ticks[entry.name].after(horizon_ms)
        return None if next_ms is None else max(next_ms, now_ms)


def _entry_problem(entry: CronEntry) -> str | None:
    """What is wrong with an entry built by hand (config has checked its own already)."""
    if entry.catch_up not in CATCH_UP_POLICIES:
        return f"catch_up must be one of {', '.join(CATCH_UP_POLICIES)}, not {entry.catch_up!r}"
    problem = schedule_problem(entry.schedule)
    if problem is not None:
        return f"schedule {entry.schedule!r}: {problem}"
    if entry.timezone is not None:
        problem = zone_problem(entry.timezone)
        if problem is not None:
            return f"timezone {entry.timezone!r}: {problem}"
    return None
