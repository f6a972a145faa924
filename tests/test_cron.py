"""shoal.broker.core.crontab: which ticks fire, given the time now and the tick each entry last fired.

Pure logic with an explicit clock: no broker, no sockets, no sleeping.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from shoal.broker.core.crontab import (
    MAX_CATCH_UP,
    ON_TIME_MS,
    CronEntry,
    CronSchedule,
    Skipped,
    cron_job_id,
    entries_from_settings,
)
from shoal.broker.core.cron_checks import schedule_problem, zone_problem

SECOND = 1000
MINUTE = 60 * SECOND


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: str = "UTC") -> int:
    """Unix ms of a wall-clock time in ``tz``."""
    return round(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


T0 = at(2024, 1, 1)  # a Monday, 00:00:00 UTC


def entry(schedule: str, name: str = "job", **options: Any) -> CronEntry:
    return CronEntry(name=name, workflow="report", schedule=schedule, **options)


def ticks(schedule: CronSchedule, now_ms: int, last_fired: Mapping[str, int]) -> list[int]:
    """The tick times ``due`` fires, whatever their entries."""
    return [tick for _, tick in schedule.due(now_ms, last_fired)]


def run_broker(
    schedule: CronSchedule,
    start_ms: int,
    end_ms: int,
    last_fired: Mapping[str, int] | None = None,
    lag_ms: int = 3,
) -> list[tuple[str, int]]:
    """Drive ``schedule`` the way the broker does; return the ticks fired up to ``end_ms``.

    Plan, store what the plan says (first-seen marks, fired ticks), sleep until
    ``next_due_ms`` and wake ``lag_ms`` late, as a real poll loop does.
    """
    last = dict(last_fired or {})
    fired: list[tuple[str, int]] = []
    now = start_ms
    while True:
        plan = schedule.plan(now, last)
        last.update(plan.first_seen)
        for fired_entry, tick in plan.fire:
            fired.append((fired_entry.name, tick))
            last[fired_entry.name] = tick
        next_ms = schedule.next_due_ms(now, last)
        if next_ms is None or next_ms > end_ms:
            return fired
        assert next_ms > now, "everything due now was just fired"
        now = next_ms + lag_ms


# --- schedules ---------------------------------------------------------------------
def test_seconds_schedule_fires_at_each_second_boundary() -> None:
    schedule = CronSchedule([entry("* * * * * *")])
    fired = run_broker(schedule, T0 + 250, T0 + 5 * SECOND + 250)
    assert fired == [("job", T0 + n * SECOND) for n in range(1, 6)]


def test_sixth_field_is_seconds_after_the_five_usual_fields() -> None:
    # "* * * * * 30" is second 30 of every minute; "30 * * * * *" is every second of minute 30.
    assert run_broker(CronSchedule([entry("* * * * * 30")]), T0, T0 + 3 * MINUTE) == [
        ("job", T0 + 30 * SECOND), ("job", T0 + 90 * SECOND), ("job", T0 + 150 * SECOND)]
    first_of_minute_30 = run_broker(CronSchedule([entry("30 * * * * *")]), T0, T0 + 31 * MINUTE)[0]
    assert first_of_minute_30 == ("job", T0 + 30 * MINUTE)


def test_every_five_seconds_is_a_step_in_the_last_field() -> None:
    fired = run_broker(CronSchedule([entry("* * * * * */5")]), T0 + 1, T0 + 20 * SECOND)
    assert [tick for _, tick in fired] == [T0 + 5 * SECOND, T0 + 10 * SECOND, T0 + 15 * SECOND, T0 + 20 * SECOND]


def test_minute_schedule_fires_on_the_minute() -> None:
    fired = run_broker(CronSchedule([entry("* * * * *")]), T0 + 10 * SECOND, T0 + 3 * MINUTE + 10 * SECOND)
    assert fired == [("job", T0 + MINUTE), ("job", T0 + 2 * MINUTE), ("job", T0 + 3 * MINUTE)]


def test_alias_keeps_its_plain_meaning() -> None:
    # croniter reads "@daily" as a hashed time when given a hash id; ours must be midnight.
    schedule = CronSchedule([entry("@daily")])
    assert ticks(schedule, T0 + 86_400_000, {"job": T0 + 1}) == [T0 + 86_400_000]


def test_hashed_schedule_is_stable_per_entry_name() -> None:
    first = CronSchedule([entry("H * * * *", name="a")]).next_due_ms(T0, {"a": T0})
    again = CronSchedule([entry("H * * * *", name="a")]).next_due_ms(T0, {"a": T0})
    assert first == again
    assert first is not None and T0 < first <= T0 + 60 * MINUTE


# --- first seen --------------------------------------------------------------------
def test_new_entry_fires_nothing_and_is_marked_first_seen_now() -> None:
    plan = CronSchedule([entry("* * * * * *")]).plan(T0 + 5_500, {})
    assert plan.fire == []
    assert plan.first_seen == {"job": T0 + 5_500}


def test_does_not_fire_before_first_seen() -> None:
    schedule = CronSchedule([entry("* * * * *")])
    first_seen = {"job": T0 + 30 * SECOND}
    assert ticks(schedule, T0 + 59_999, first_seen) == []
    assert ticks(schedule, T0 + MINUTE, first_seen) == [T0 + MINUTE]


def test_tick_at_the_first_seen_instant_does_not_fire() -> None:
    # Only ticks strictly after last_fired fire; a mark that falls on a tick counts as fired.
    schedule = CronSchedule([entry("* * * * *")])
    assert ticks(schedule, T0 + MINUTE - 1, {"job": T0}) == []
    assert schedule.plan(T0, {"job": T0}).fire == []


def test_next_due_of_a_new_entry_is_its_first_tick_after_now() -> None:
    assert CronSchedule([entry("* * * * *")]).next_due_ms(T0 + 5, {}) == T0 + MINUTE


# --- catch-up after 10 missed ticks ------------------------------------------------
# The broker fired the 00:01 tick, then was down; it comes back 30 s after 00:11,
# so the ticks 00:02 ... 00:11 (ten) were missed, and the newest is 30 s old.
LAST = {"job": T0 + MINUTE}
BACK = T0 + 11 * MINUTE + 30 * SECOND
MISSED = [T0 + n * MINUTE for n in range(2, 12)]


def test_catch_up_one_fires_the_newest_missed_tick_once() -> None:
    plan = CronSchedule([entry("* * * * *", catch_up="one")]).plan(BACK, LAST)
    assert [tick for _, tick in plan.fire] == [MISSED[-1]]
    assert plan.skipped == [Skipped("job", T0 + MINUTE, MISSED[-1], 9, exact=True, capped=False)]


def test_catch_up_all_fires_each_missed_tick_oldest_first() -> None:
    plan = CronSchedule([entry("* * * * *", catch_up="all")]).plan(BACK, LAST)
    assert [tick for _, tick in plan.fire] == MISSED
    assert plan.skipped == []


def test_catch_up_none_fires_nothing_missed_and_resumes_at_the_next_tick() -> None:
    schedule = CronSchedule([entry("* * * * *", catch_up="none")])
    assert schedule.plan(BACK, LAST).fire == []
    assert schedule.next_due_ms(BACK, LAST) == T0 + 12 * MINUTE
    plan = schedule.plan(T0 + 12 * MINUTE, LAST)
    assert [tick for _, tick in plan.fire] == [T0 + 12 * MINUTE]
    assert plan.skipped == [Skipped("job", T0 + MINUTE, T0 + 12 * MINUTE, 10, exact=True, capped=False)]


def test_catch_up_default_is_one() -> None:
    assert entry("* * * * *").catch_up == "one"
    assert ticks(CronSchedule([entry("* * * * *")]), BACK, LAST) == [MISSED[-1]]


def test_catch_up_none_still_runs_a_tick_that_is_only_late() -> None:
    # A broker back 3 s after the 00:11 tick runs it: late by less than ON_TIME_MS is not missed.
    schedule = CronSchedule([entry("* * * * *", catch_up="none")])
    assert ticks(schedule, T0 + 11 * MINUTE + 3 * SECOND, LAST) == [T0 + 11 * MINUTE]
    assert ticks(schedule, T0 + 11 * MINUTE + ON_TIME_MS, LAST) == []


def test_catch_up_all_is_capped_and_reports_what_it_dropped() -> None:
    schedule = CronSchedule([entry("* * * * * *", catch_up="all")])
    plan = schedule.plan(T0 + 2 * MAX_CATCH_UP * SECOND, {"job": T0})
    fired = [tick for _, tick in plan.fire]
    assert len(fired) == MAX_CATCH_UP
    assert fired[0] == T0 + (MAX_CATCH_UP + 1) * SECOND and fired[-1] == T0 + 2 * MAX_CATCH_UP * SECOND
    assert plan.skipped == [Skipped("job", T0, fired[0], MAX_CATCH_UP, exact=True, capped=True)]


def test_every_policy_fires_each_tick_of_a_running_broker() -> None:
    for policy in ("none", "one", "all"):
        schedule = CronSchedule([entry("* * * * * */10", catch_up=policy)])
        fired = run_broker(schedule, T0, T0 + MINUTE, lag_ms=40)
        assert [tick for _, tick in fired] == [T0 + n * 10 * SECOND for n in range(1, 7)], policy


# --- several entries, disabled entries, clock steps --------------------------------
def test_ticks_of_several_entries_come_oldest_first() -> None:
    schedule = CronSchedule([
        entry("*/2 * * * *", name="even", catch_up="all"),
        entry("*/3 * * * *", name="third", catch_up="all"),
    ])
    due = schedule.due(T0 + 6 * MINUTE, {"even": T0, "third": T0})
    assert [(e.name, tick) for e, tick in due] == [
        ("even", T0 + 2 * MINUTE), ("third", T0 + 3 * MINUTE),
        ("even", T0 + 4 * MINUTE), ("even", T0 + 6 * MINUTE), ("third", T0 + 6 * MINUTE),
    ]


def test_disabled_entry_never_fires() -> None:
    schedule = CronSchedule([entry("* * * * * *", enabled=False)])
    assert schedule.plan(T0 + 10 * SECOND, {}) == schedule.plan(T0, {})  # not even first seen
    assert schedule.due(T0 + 10 * SECOND, {"job": T0}) == []
    assert schedule.next_due_ms(T0, {"job": T0}) is None
    assert run_broker(schedule, T0, T0 + MINUTE) == []


def test_clock_stepped_back_fires_nothing_until_it_passes_last_fired() -> None:
    schedule = CronSchedule([entry("* * * * *")])
    last = {"job": T0 + 10 * MINUTE}  # fired before the wall clock was set back
    assert schedule.due(T0 + 5 * MINUTE + 1, last) == []
    assert schedule.next_due_ms(T0 + 5 * MINUTE + 1, last) == T0 + 11 * MINUTE


# --- next_due_ms -------------------------------------------------------------------
def test_next_due_is_the_soonest_tick_of_any_enabled_entry() -> None:
    schedule = CronSchedule([
        entry("*/5 * * * *", name="five"),
        entry("*/3 * * * *", name="three"),
        entry("* * * * *", name="off", enabled=False),
    ])
    assert schedule.next_due_ms(T0 + 1, {"five": T0, "three": T0, "off": T0}) == T0 + 3 * MINUTE


def test_next_due_is_now_while_ticks_wait_to_be_fired() -> None:
    schedule = CronSchedule([entry("* * * * *")])
    assert schedule.next_due_ms(BACK, LAST) == BACK


def test_next_due_is_none_without_enabled_entries() -> None:
    assert CronSchedule([]).next_due_ms(T0, {}) is None


@pytest.mark.parametrize("policy", ["none", "one", "all"])
@pytest.mark.parametrize("now_ms", [T0 + 1, T0 + 59 * SECOND, BACK, T0 + 11 * MINUTE + 5 * SECOND])
def test_next_due_is_the_first_instant_due_fires(policy: str, now_ms: int) -> None:
    schedule = CronSchedule([entry("* * * * *", catch_up=policy)])
    next_ms = schedule.next_due_ms(now_ms, LAST)
    assert next_ms is not None
    assert schedule.due(next_ms, LAST) != []
    if next_ms > now_ms:
        assert schedule.due(next_ms - 1, LAST) == []
        assert schedule.due(now_ms, LAST) == []


# --- time zones ----------------------------------------------------------------------
def test_schedule_runs_in_the_entry_time_zone() -> None:
    schedule = CronSchedule([
        entry("0 9 * * *", name="paris", timezone="Europe/Paris", catch_up="all"),
        entry("0 9 * * *", name="utc", catch_up="all"),
    ])
    day = at(2024, 1, 15)
    due = schedule.due(day + 12 * 60 * MINUTE, {"paris": day, "utc": day})
    assert [(e.name, tick) for e, tick in due] == [("paris", at(2024, 1, 15, 8)), ("utc", at(2024, 1, 15, 9))]


def test_daily_schedule_keeps_local_time_across_spring_forward() -> None:
    # Paris moves from UTC+1 to UTC+2 on 31 March 2024: 09:00 local is 08:00, then 07:00 UTC.
    schedule = CronSchedule([entry("0 9 * * *", timezone="Europe/Paris")])
    fired = run_broker(schedule, at(2024, 3, 29, 12), at(2024, 4, 1, 12))
    assert [tick for _, tick in fired] == [at(2024, 3, 30, 8), at(2024, 3, 31, 7), at(2024, 4, 1, 7)]
    assert [tick for _, tick in fired] == [at(2024, 3, d, 9, tz="Europe/Paris") for d in (30, 31)] + [
        at(2024, 4, 1, 9, tz="Europe/Paris")]


def test_half_hourly_schedule_neither_repeats_nor_skips_in_the_autumn_repeated_hour() -> None:
    # 02:00-03:00 happens twice in Paris on 27 October 2024; real time still advances 30 min a tick.
    schedule = CronSchedule([entry("*/30 * * * *", timezone="Europe/Paris")])
    fired = run_broker(schedule, at(2024, 10, 26, 23, 45), at(2024, 10, 27, 3, 15))
    assert [tick for _, tick in fired] == [at(2024, 10, 27, 0) + n * 30 * MINUTE for n in range(7)]


# --- job ids -----------------------------------------------------------------------
def test_cron_job_id_is_deterministic() -> None:
    assert cron_job_id("nightly", T0) == cron_job_id("nightly", T0)
    assert len(cron_job_id("nightly", T0)) == 16


def test_cron_job_id_differs_by_entry_and_tick() -> None:
    ids = {cron_job_id(name, tick) for name in ("a", "b", "a:1") for tick in (T0, T0 + 1, T0 + SECOND)}
    assert len(ids) == 9


def test_cron_job_id_sorts_by_tick_like_other_job_ids() -> None:
    assert cron_job_id("zzz", T0) < cron_job_id("aaa", T0 + 1)
    assert int.from_bytes(cron_job_id("nightly", T0)[:6], "big") == T0
    parsed = uuid.UUID(bytes=cron_job_id("nightly", T0))
    assert (parsed.version, parsed.variant) == (8, uuid.RFC_4122)


def test_cron_job_id_refuses_a_tick_outside_48_bits() -> None:
    with pytest.raises(ValueError):
        cron_job_id("nightly", -1)


# --- listing -----------------------------------------------------------------------
def test_listing_shows_every_entry_with_last_and_next_times() -> None:
    schedule = CronSchedule([
        entry("*/5 * * * *", name="report", group="email", payload={"kind": "daily"}),
        entry("0 9 * * *", name="paris", timezone="Europe/Paris", catch_up="all"),
        entry("* * * * *", name="off", enabled=False),
    ])
    rows = schedule.listing(T0 + 7 * MINUTE, {"report": T0 + 5 * MINUTE, "paris": T0 + 30 * SECOND})
    assert rows == [
        {"name": "report", "workflow": "report", "group": "email", "schedule": "*/5 * * * *",
         "timezone": "UTC", "enabled": True, "catch_up": "one",
         "last_ms": T0 + 5 * MINUTE, "next_ms": T0 + 10 * MINUTE,
         "upcoming_ms": [T0 + 10 * MINUTE, T0 + 15 * MINUTE, T0 + 20 * MINUTE], "warning": None},
        # a first-seen mark is not a tick: never fired yet
        {"name": "paris", "workflow": "report", "group": None, "schedule": "0 9 * * *",
         "timezone": "Europe/Paris", "enabled": True, "catch_up": "all",
         "last_ms": None, "next_ms": at(2024, 1, 1, 8),
         "upcoming_ms": [at(2024, 1, 1, 8), at(2024, 1, 2, 8), at(2024, 1, 3, 8)], "warning": None},
        {"name": "off", "workflow": "report", "group": None, "schedule": "* * * * *",
         "timezone": "UTC", "enabled": False, "catch_up": "one", "last_ms": None, "next_ms": None,
         "upcoming_ms": [], "warning": None},
    ]


def test_listing_of_an_overdue_entry_says_it_is_due_now() -> None:
    (row,) = CronSchedule([entry("* * * * *")]).listing(BACK, LAST)
    assert (row["last_ms"], row["next_ms"]) == (T0 + MINUTE, BACK)


# --- entries and their checks ------------------------------------------------------
def test_entries_from_settings_keep_every_field_in_file_order() -> None:
    cron = {
        "nightly": {"workflow": "report", "schedule": "0 3 * * *", "payload": {"kind": "daily"},
                    "group": "email", "timezone": "Europe/Paris", "enabled": False, "catch_up": "all"},
        "tick": {"workflow": "ping", "schedule": "* * * * * *", "payload": None, "group": None,
                 "timezone": None, "enabled": True, "catch_up": "one"},
    }
    assert entries_from_settings(cron) == [
        CronEntry("nightly", "report", "0 3 * * *", {"kind": "daily"}, "email", "Europe/Paris", False, "all"),
        CronEntry("tick", "ping", "* * * * * *"),
    ]


@pytest.mark.parametrize("schedule", [
    "0 3 * * *", "* * * * * */5", "0 9 * * MON-FRI", "0 0 L * *", "@daily", "@HOURLY", "H H * * *",
])
def test_good_schedules_pass(schedule: str) -> None:
    assert schedule_problem(schedule) is None


@pytest.mark.parametrize(("schedule", "problem"), [
    ("61 * * * *", 'the minute field "61" is not acceptable, out of range'),
    ("* * * 13 *", 'the month field "13" is not acceptable, out of range'),
    ("* * * * * 60", 'the second field "60" is not acceptable, out of range'),
    ("* * *", "it has 3 fields"),
    ("0 0 1 1 * 0 2030", "it has 7 fields"),
    ("", "it is empty"),
    ("0 0 30 2 *", "no date ever matches it"),
    ("@reboot", "unknown alias; expected one of @yearly, @annually, @monthly, @weekly, @daily, "
                "@midnight, @hourly"),
])
def test_bad_schedules_say_why(schedule: str, problem: str) -> None:
    assert schedule_problem(schedule) == problem


def test_time_zones_are_checked() -> None:
    assert zone_problem("Europe/Paris") is None
    assert zone_problem("Mars/Olympus") == "no such zone in the time zone database"
    assert zone_problem("../etc/passwd") == "not a zone name"


@pytest.mark.parametrize(("bad", "message"), [
    (entry("61 * * * *", name="nightly"), "cron.nightly: schedule '61 * * * *': the minute field"),
    (entry("* * * * *", name="nightly", timezone="Mars/Olympus"), "cron.nightly: timezone 'Mars/Olympus'"),
    (entry("* * * * *", name="nightly", catch_up="some"), "cron.nightly: catch_up must be one of"),
])
def test_schedule_refuses_a_bad_entry_by_name(bad: CronEntry, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("*", r"\*")):
        CronSchedule([bad])


def test_schedule_refuses_two_entries_of_one_name() -> None:
    with pytest.raises(ValueError, match="cron.job: defined twice"):
        CronSchedule([entry("* * * * *"), entry("0 * * * *")])
