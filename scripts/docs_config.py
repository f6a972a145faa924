"""The config reference page, made from the schema in ``conf/`` (see gen_docs.py).

Keys, types, defaults, where each key may appear and which environment variable or
flag also sets it all come from ``conf`` itself: the type is the "expected ..." text
the checker puts in its own error message, the default is the settings dataclass's,
written the way ``shoal config --show`` writes it. Only the meaning of each key is
written here, and ``render`` refuses to run when a key has none (or a description
names a key the schema no longer has), so a new key cannot go undocumented.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Mapping

from shoal.broker.core.crontab import MAX_CATCH_UP, ON_TIME_MS
from shoal.conf.checks import (BROKER_KEYS, CRON_DEFAULTS, CRON_KEYS, CRON_REQUIRED, GROUP_KEYS, SECURITY_KEYS, Checker,
                               Invalid, rate)
from shoal.conf.durations import DURATION_HINT
from shoal.conf.loader import (DEFAULT_CONFIG, ENV_BROKER_KEYS, ENV_SECURITY_KEYS, FLAG_BROKER_KEYS, FLAG_GROUP_KEYS,
                               FLAG_SECURITY_KEYS)
from shoal.conf.settings import BrokerSettings, GroupSettings
from shoal.conf.show import _shown  # the one place that writes a value as shoal.toml takes it
from shoal.conf.tables import TOP_LEVEL_TABLES

BROKER_MEANING = {
    "bind": "ZeroMQ endpoint the broker listens on. Clients and workers connect to it; a wildcard "
            "host (`tcp://*:5555`) is reached on 127.0.0.1 by the workers the broker starts and by `shoal`. "
            "An IPv6 address goes in brackets (`tcp://[::1]:5555`). A bind that cannot be made (the port taken, "
            "an address not this host's) stops the broker with exit code 1 and a line naming the endpoint and why.",
    "data": "LMDB data directory: the tables, the log and `snapshots/`. One broker per directory "
            "(a lock names the holder's PID). Made if missing; one that cannot be (a file in its place, "
            "a parent not writable) stops the broker with exit code 1 and a line naming it and why.",
    "max_message_bytes": "Largest message the broker decodes; a bigger request is answered with an error "
                         "and nothing is stored.",
    "max_step_bytes": "Largest encoded `step.run` result; a bigger one makes `step.run` raise `StepError`.",
    "heartbeat_interval": "How often broker and workers heartbeat each other (Paranoid Pirate style); "
                          "also the longest the broker loop sleeps.",
    "map_size": "Initial LMDB map size. The map doubles when full, up to `max_size`.",
    "max_size": "Storage cap. Enqueues are refused (`StorageFull`) once live pages pass half of it; a "
                "result that would take the store past 90% fails its attempt as `storage_full`. "
                "0: no cap but the disk.",
    "min_free_disk": "Enqueues are refused while the disk under `data` has less room than this (read once "
                     "a second); results are refused below half of it, so running jobs can still finish.",
    "snapshot_interval": "Take a snapshot (a compacted copy under `DATA/snapshots/`) this often and drop "
                         "the log entries it holds...",
    "snapshot_entries": "...or after this many log entries, whichever comes first.",
    "snapshot_keep": "Snapshots kept; once there are this many, the next is written over the oldest's file.",
    "supervise": "Start and watch the worker processes the groups below ask for on this host "
                 "(`false`: start none, as `broker --no-supervise`).",
    "write_ahead": "A pass's writes are durable, and acked, once synced in `DATA/wal` (one small write and "
                   "one `fdatasync`); LMDB commits them every 50 ms. `false`: every pass is its own synced "
                   "LMDB commit before its acks (a sequential enqueue takes about 1.5x as long on a VM disk).",
    "spin": "After a pass that read messages, the broker polls its sockets without sleeping for up to this "
            "long before it sleeps in `poll`: the next request of a busy caller is read at once by a loop "
            "that is still running, instead of waking a halted CPU (on a VM, 0.1-0.2 ms a request). It "
            "yields the CPU to any thread that wants it meanwhile, and an idle broker does not spin. `0`: "
            "sleep at once (a laptop, a host where every core is taken). At most `10ms`.",
    "events": "Endpoint of the lifecycle event stream (`shoal events`, `Client.events()`); empty: "
              "chosen next to `bind`.",
    "metrics": "`host:port` serving Prometheus text at `/metrics`; empty: off. A host beyond loopback "
               "needs `[security]` or `insecure`, as `bind` does.",
    "metrics_token": "When set, `/metrics` answers only requests with `Authorization: Bearer <token>` "
                     "(401 otherwise). Prometheus: `authorization: {credentials: ...}`. Shown as `(set)` by "
                     "`shoal config --show`.",
    "insecure": "Without `[security]`, the broker refuses to listen beyond loopback or ipc (`bind`, `events`, "
                "`metrics`) unless this is true; its start line then says `insecure`.",
}

SECURITY_MEANING = {
    "broker_secret_key": "Broker: its secret certificate (`shoal keygen broker`). Setting it turns CURVE on for "
                         "every broker socket (commands and events), with the allow-lists below; nothing else "
                         "gets in.",
    "clients": "Broker: directory of public keys (`NAME.key`) allowed as clients: enqueue, wait, read "
               "(stats, jobs, payloads, history, events).",
    "admins": "Broker: directory of public keys allowed as admins: everything a client may, plus requeue "
              "and cancel.",
    "key": "Client, `shoal`, dashboard, worker: this program's own secret certificate (`NAME.key_secret`).",
    "broker_public_key": "Client, `shoal`, dashboard, worker: the broker's public certificate (`broker.key`), "
                         "so a program talks only to the real broker.",
}

GROUP_MEANING = {
    "app": "Module(s) a worker of the group imports for its workflows. The broker starts workers only "
           "for groups that have one.",
    "workers": "Always-on worker processes on this host. 0: scale to zero (a worker is started when a "
               "job waits and no connected worker of the group has a free slot).",
    "max_workers": "With `workers = 0`: at most this many processes are started, one at a time, while the "
                   "backlog outgrows the free slots.",
    "concurrency": "Parallel runs per worker process: the slots it advertises.",
    "retries": "Retries after the first attempt (3: four attempts in all), for workflows that do not "
               "set their own (`@workflow(retries=...)`).",
    "backoff": "Delay before the first retry; it doubles, with jitter, up to `backoff_max`.",
    "backoff_max": "Longest delay between two attempts.",
    "idle_timeout": "A scaled-to-zero group's workers are drained after this long with nothing pending "
                    "or running.",
    "lease": "A worker silent this long is declared lost; its jobs go back to the queue (the attempt "
             "counts) or to the dead letters as `worker_lost`.",
    "grace": "On SIGTERM a worker finishes in-flight jobs for this long, then hands the rest back "
             "(no attempt charged).",
    "timeout": "Longest run of one attempt; past it the run is cancelled and the attempt fails with "
               "kind `timeout` (retried like any failure). A sync handler that ignores it for 5 s makes "
               "its worker hand back its other jobs and replace itself. `@workflow(timeout=...)` beats "
               "it; 0: no limit.",
    "nice": "OS priority of the group's worker processes (-20..19), applied to their session's "
            "autogroup too, so CPU-heavy groups yield to latency-sensitive ones.",
    "max_jobs": "Recycle a worker (drain, exit, start a fresh one) after this many jobs; 0: never.",
    "max_memory": "Recycle a worker whose resident memory passes this; 0: never.",
    "retention": "Finished jobs and their results are deleted this long after they finish; dead "
                 "letters stay until requeued.",
    "rate": "Dispatch rate limit for the whole group, across all its workers (a token bucket); 0: none.",
    "max_pending": "Enqueues raise `GroupSaturated` while this many jobs are pending; 0: no limit.",
    "starvation": "Work pending this long with no worker or no free slot makes the group *starving* "
                  "(`shoal health`, metric `shoal_starving`).",
}

CRON_MEANING = {
    "workflow": "The workflow to enqueue at each tick (routed like any bare name, or by `group`).",
    "schedule": "croniter syntax: 5 fields (minute hour day-of-month month day-of-week), or 6 where the "
                "**sixth, last field is seconds**: `\"* * * * * */10\"` fires every ten seconds, while "
                "`\"*/10 * * * * *\"` fires every second of every tenth minute (the broker warns at start "
                "when a schedule looks written seconds-first, and `shoal cron` shows the next three fire "
                "times). Aliases `@hourly`, `@daily`, ... stand alone; `H` hashes on the entry's name.",
    "payload": "The payload of each tick's job: any TOML value.",
    "group": "The group to run it in (default: the route learned from workers).",
    "timezone": "IANA time zone the schedule is read in, DST included (default UTC).",
    "enabled": "`false` keeps the entry listed but never fires it.",
    "catch_up": f"After downtime: `\"one\"` fires the newest missed tick only; `\"all\"` each missed tick, "
                f"oldest first (at most {MAX_CATCH_UP:,}); `\"none\"` none, unless the newest is less than "
                f"{ON_TIME_MS // 1000} s late.",
}

_PROBE = object()  # no checker accepts it, so each says what it expects


def expected(check: Checker) -> str:
    """The type of a key, in the words its checker uses in error messages."""
    try:
        check(_PROBE)
    except Invalid as exc:
        found = re.match(r"expected (.*), found ", str(exc))
        if found:
            return found.group(1)
    return "any TOML value"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _same_keys(meaning: Mapping[str, str], schema: Mapping[str, object], table: str) -> None:
    missing, stale = set(schema) - set(meaning), set(meaning) - set(schema)
    if missing or stale:
        raise SystemExit(f"scripts/docs_config.py: {table}: describe {sorted(missing)}; "
                         f"drop {sorted(stale)} (conf/checks.py no longer has them)")


def _flag(parser: argparse.ArgumentParser, key: str) -> str:
    for action in parser._actions:
        if action.dest in (key, f"no_{key}") and action.option_strings:
            return f"`{parser.prog} {action.option_strings[0]}`"
    raise SystemExit(f"scripts/docs_config.py: no {parser.prog} flag sets {key!r}")


def render(broker_parser: argparse.ArgumentParser, worker_parser: argparse.ArgumentParser) -> str:
    """The whole page, as Markdown."""
    for meaning, schema, table in ((BROKER_MEANING, BROKER_KEYS, "[broker]"), (GROUP_MEANING, GROUP_KEYS, "groups"),
                                   (CRON_MEANING, CRON_KEYS, "[cron]")):
        _same_keys(meaning, schema, table)
    env_of = {key: var for var, key in ENV_BROKER_KEYS.items()}
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from conf/ (checks.py, settings.py, loader.py); "
        "edit those, then run `python scripts/gen_docs.py`. -->",
        "",
        f"Shoal reads one TOML file: `--config FILE`, else `SHOAL_CONFIG`, else `./{DEFAULT_CONFIG}` when it "
        "exists, else only the defaults below apply. A file named on purpose must exist. Every problem is "
        "reported at once, each with the file, line and key path, and nothing starts until all are fixed.",
        "",
        "Top-level tables: " + ", ".join(f"`[{name}]`" for name in TOP_LEVEL_TABLES) + ".",
        "",
        "Value formats: durations are " + DURATION_HINT.removeprefix("a duration like ") + " (`\"250ms\"`, "
        "`\"1.5s\"`, `\"1d\"` too); sizes are `\"512MiB\"`, `\"1GB\"` (decimal) or `\"1GiB\"` (binary); "
        "rates are " + expected(rate).removeprefix("a rate like ") + ".",
        "",
        "`shoal config --show [--server NAME] [--json]` prints every effective value and the table it came from.",
        "",
        "## `[broker]`",
        "",
        "Settings of the broker process. The environment beats the file, and flags beat both.",
        "",
    ]
    rows = []
    for key, spec in BROKER_KEYS.items():
        also = [f"`{env_of[key]}`"] if key in env_of else []
        also += [_flag(broker_parser, key)] if key in FLAG_BROKER_KEYS else []
        shown = _shown(BrokerSettings(), spec) or '""'  # an empty string is a value too: show it as TOML does
        rows.append([f"`{key}`", expected(spec.check), f"`{shown}`",
                     ", ".join(also) or "-", BROKER_MEANING[key]])
    lines += _table(["key", "type", "default", "also set by", "meaning"], rows)
    lines += [
        "",
        "## Group settings",
        "",
        "A *group* is a named pool of workers (`email`, `media`, ...). Each key below may appear in four "
        "tables, applied over the built-in defaults (the column below) in this order, each over the one before:",
        "",
        "1. `[workflows]`: every group;",
        "2. `[workflows.<group>]`: one group;",
        "3. `[servers.<name>.workflows]`: every group, only on the host whose server name is `<name>` "
        "(`--server`, else `SHOAL_SERVER`, else the host name);",
        "4. `[servers.<name>.workflows.<group>]`: one group on that host;",
        "",
        "then the worker's flags. A group named nowhere gets the defaults, tables 1 and 3, and the flags. "
        "`[servers.*]` blocks of other hosts are checked too, so a typo is caught on any machine.",
        "",
    ]
    rows = [[f"`{key}`", expected(spec.check), f"`{_shown(GroupSettings(), spec)}`",
             _flag(worker_parser, key) if key in FLAG_GROUP_KEYS else "-", GROUP_MEANING[key]]
            for key, spec in GROUP_KEYS.items()]
    lines += _table(["key", "type", "default", "flag", "meaning"], rows)
    lines += _security_section(worker_parser)
    lines += ["", "## `[cron.<name>]`", "",
              "One table per entry. Cron runs only in the broker: each tick's job and its \"last fired\" mark "
              "are stored in one transaction, so a tick is neither lost nor fired twice, and a new entry "
              "never fires for the past. `shoal cron` lists the entries with their last and next three fire times.",
              ""]
    rows = [[f"`{key}`", expected(check), "required" if key in CRON_REQUIRED else _default(CRON_DEFAULTS[key]),
             CRON_MEANING[key]] for key, check in CRON_KEYS.items()]
    lines += _table(["key", "type", "default", "meaning"], rows)
    lines += ["", "## `[rates]`", "",
              "A dispatch rate limit for one workflow, across every worker of its group: "
              f"`<workflow> = RATE`, where RATE is {expected(rate)} (0: none). Other workflows of the "
              "same group are not held behind it.",
              "", "```toml", "[rates]", 'send-email = "20/m"', "```", ""]
    return "\n".join(lines)


def _security_section(worker_parser: argparse.ArgumentParser) -> list[str]:
    """``[security]`` and ``[security.workers]`` (see docs/security.md)."""
    _same_keys(SECURITY_MEANING, SECURITY_KEYS, "[security]")
    env_of = {key: var for var, key in ENV_SECURITY_KEYS.items()}
    lines = ["", "## `[security]`", "",
             "Transport security with CurveZMQ (docs/security.md). Paths are read relative to the working "
             "directory, like `data`; whether a file exists is checked by the program that uses it, so one "
             "file can serve the broker's host and the clients' hosts.", ""]
    rows = []
    for key, spec in SECURITY_KEYS.items():
        also = [f"`{env_of[key]}`"] if key in env_of else []
        also += [_flag(worker_parser, key), f"`shoal {_flag(worker_parser, key).split()[1]}"] \
            if key in FLAG_SECURITY_KEYS else []
        rows.append([f"`{key}`", expected(spec.check), "not set", ", ".join(also) or "-", SECURITY_MEANING[key]])
    lines += _table(["key", "type", "default", "also set by", "meaning"], rows)
    lines += ["", "### `[security.workers]`", "",
              "`<group> = DIR`: a directory of public keys allowed to say HELLO for that group (and take its jobs), "
              "one table entry per group. Workers the broker starts itself need no entry: each group gets a key "
              "made in memory at broker start.", "",
              "```toml", "[security.workers]", 'media = "keys/workers-media"', "```"]
    return lines


def _default(value: object) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"
