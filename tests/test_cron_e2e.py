"""Cron in a real broker: ticks fire on time, exactly once across a SIGKILL, catch-up policies."""
from __future__ import annotations

import time

from shoal.broker.core.crontab import cron_job_id

from conftest import DEFAULT_TOML, Cluster, lines, wait_for


def _cron_toml(*entries: tuple[str, str]) -> str:
    out = DEFAULT_TOML
    for name, extra in entries:
        out += (f'\n[cron.{name}]\nworkflow = "cron-mark"\nschedule = "* * * * * *"\n'
                f'payload = {{ entry = "{name}" }}\ngroup = "default"\n{extra}\n')
    return out


def _fired(cluster: Cluster, entry: str) -> list[str]:
    return [line.split()[1] for line in lines(cluster.tmp / "cron.log") if line.split()[0] == entry]


def _ticks(entry: str, job_hexes: list[str], start_ms: int, end_ms: int) -> list[int]:
    """Which whole-second ticks in [start, end] these job ids belong to."""
    by_id = {cron_job_id(entry, t).hex(): t for t in range(start_ms - start_ms % 1000, end_ms + 1000, 1000)}
    return sorted(by_id[h] for h in job_hexes if h in by_id)


def test_seconds_schedule_fires_once_per_tick_on_the_second(cluster_factory) -> None:
    cluster = cluster_factory(_cron_toml(("each", "")))
    start_ms = int(time.time() * 1000)
    cluster.start_broker()
    cluster.start_worker("default", 4)
    wait_for(lambda: len(_fired(cluster, "each")) >= 3, what="three ticks")
    fired = _fired(cluster, "each")
    ticks = _ticks("each", fired, start_ms, int(time.time() * 1000))
    assert len(ticks) == len(fired) and len(set(fired)) == len(fired)  # every job is a known tick, once
    assert all(b - a == 1000 for a, b in zip(ticks, ticks[1:]))
    assert ticks[0] > start_ms  # a new entry never fires for the past
    listing = {e["name"]: e for e in cluster.client().cron()}
    assert listing["each"]["last_ms"] % 1000 == 0 and listing["each"]["next_ms"] > listing["each"]["last_ms"]


def test_no_tick_fires_twice_across_a_broker_sigkill(cluster_factory) -> None:
    cluster = cluster_factory(_cron_toml(("steady", 'catch_up = "all"')))
    start_ms = int(time.time() * 1000)
    cluster.start_broker()
    cluster.start_worker("default", 4)
    wait_for(lambda: len(_fired(cluster, "steady")) >= 2, what="two ticks")
    cluster.broker.kill()
    cluster.start_broker()
    seen = len(_fired(cluster, "steady"))
    wait_for(lambda: len(_fired(cluster, "steady")) >= seen + 3, timeout=30, what="three more ticks")
    fired = _fired(cluster, "steady")
    assert len(set(fired)) == len(fired), "a tick ran twice"
    ticks = _ticks("steady", fired, start_ms, int(time.time() * 1000))
    assert len(ticks) == len(fired)
    assert all(b - a == 1000 for a, b in zip(ticks, ticks[1:])), "catch_up=all left a gap"


def test_catch_up_policies_after_downtime(cluster_factory) -> None:
    every_15s = 'schedule = "* * * * * */15"'
    toml = _cron_toml(("all", 'catch_up = "all"'), ("one", 'catch_up = "one"'), ("none", 'catch_up = "none"'))
    toml = toml.replace('schedule = "* * * * * *"\npayload = { entry = "one" }',
                        f'{every_15s}\npayload = {{ entry = "one" }}')
    toml = toml.replace('schedule = "* * * * * *"\npayload = { entry = "none" }',
                        f'{every_15s}\npayload = {{ entry = "none" }}')
    cluster = cluster_factory(toml)
    up_ms = int(time.time() * 1000)
    cluster.start_broker()
    ready_ms = int(time.time() * 1000)  # the broker has seen every entry: each later tick is owed
    # Stop the broker just after a 15-second boundary, so every entry has seen the next one coming...
    wait_for(lambda: time.time() * 1000 > up_ms + 1000 and 0.5 <= time.time() % 15 < 3.0,
             timeout=40, what="a moment just after a 15 s boundary")
    cluster.broker.kill()
    down_ms = int(time.time() * 1000)
    missed_15s = (down_ms // 15_000 + 1) * 15_000
    # ...and come back when that missed tick is 11-14 s old: older than the 10 s a late tick may
    # still run under "none", so "one" (runs it) and "none" (skips it) must differ.
    wait_for(lambda: missed_15s + 11_000 <= time.time() * 1000 < missed_15s + 14_000,
             timeout=40, what="the right moment to restart")
    back_ms = int(time.time() * 1000)
    cluster.start_broker()
    cluster.start_worker("default", 8)
    # catch_up = "all" owes every tick from when the broker first saw the entry to its restart:
    # those fired before the SIGKILL (queued, not run: no worker yet) and the missed ones. Eight
    # run at once, so one may still be in flight while later ones are logged: wait for them all.
    owed = set(range(max(ready_ms, down_ms - 5000) // 1000 * 1000 + 1000, back_ms // 1000 * 1000 + 1, 1000))

    def missing() -> set[int]:
        return owed - set(_ticks("all", _fired(cluster, "all"), min(owed), back_ms))

    wait_for(lambda: not missing(), timeout=30, what="every tick 'all' owes")
    # the catch-up job of "one" is queued behind those of "all": let it run too
    wait_for(lambda: _ticks("one", _fired(cluster, "one"), missed_15s - 1, int(time.time() * 1000)),
             timeout=30, what="the catch-up run of 'one'")
    now_ms = int(time.time() * 1000)
    fired_all = _fired(cluster, "all")
    assert len(set(fired_all)) == len(fired_all), "a tick of 'all' ran twice"
    assert min(owed) < down_ms < max(owed)
    # "one" ran the newest missed tick, 11-14 s late; "none" did not
    assert missed_15s in _ticks("one", _fired(cluster, "one"), down_ms - 20_000, now_ms)
    assert missed_15s not in _ticks("none", _fired(cluster, "none"), down_ms - 20_000, now_ms)


def test_a_cron_tick_wakes_a_scaled_to_zero_group(cluster_factory) -> None:
    toml = DEFAULT_TOML + ('\n[workflows.media]\napp = "testapp"\nworkers = 0\n'
                           '\n[cron.thumbs]\nworkflow = "cron-media"\nschedule = "* * * * * *"\n'
                           'payload = { entry = "thumbs" }\ngroup = "media"\n')
    cluster = cluster_factory(toml)
    cluster.start_broker(supervise=True)
    client = cluster.client()
    wait_for(lambda: _fired(cluster, "thumbs"), timeout=30, what="the cron job to run in the woken group")
    assert client.stats()["media"]["launches"] == 1
