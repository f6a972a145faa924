"""``shoal cron`` and ``shoal health`` (what an operator reads on call), and a quiet end when
the reader of the output leaves (``shoal job ID | head``).

Kept apart from ``shoal.cli`` (which only parses and dispatches) so each stays small.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from shoal import cli_format as fmt

if TYPE_CHECKING:
    from shoal.client import Client

EXIT_OK, EXIT_FAILED = 0, 1
EXIT_SIGPIPE = 128 + 13  # what a shell reports for a command whose reader closed the pipe
CRON_FIELDS = ("schedule fields: minute hour day-of-month month day-of-week [second]; "
               "an optional sixth field is seconds, and it comes last (croniter's order)")


def cmd_cron(client: "Client", args: argparse.Namespace) -> int:
    """``shoal cron``: one row per entry, then the next fire times and any schedule warnings."""
    entries = client.cron()
    if args.json:
        print(fmt.to_json(entries, indent=2))
        return EXIT_OK
    if not entries:
        print("no cron entries ([cron.NAME] tables in shoal.toml)")
        return EXIT_OK
    rows = [[e["name"], e["workflow"], e.get("group") or "-", e["schedule"], e.get("timezone") or "UTC",
             "yes" if e["enabled"] else "no", fmt.timestamp(e["last_ms"]) if e.get("last_ms") else "never",
             fmt.timestamp(e["next_ms"]) if e.get("next_ms") else "-"] for e in entries]
    print("\n".join(fmt.table(["NAME", "WORKFLOW", "GROUP", "SCHEDULE", "TZ", "ENABLED", "LAST", "NEXT"], rows)))
    print("\nnext fire times (UTC):")
    width = max(len(e["name"]) for e in entries)
    for e in entries:
        upcoming = ", ".join(_tick(ms) for ms in e.get("upcoming_ms") or []) or "none (disabled or never)"
        print(f"  {e['name']:<{width}}  {upcoming}")
    print(f"\n{CRON_FIELDS}")
    for e in entries:
        if e.get("warning"):
            print(f"warning: cron {e['name']}: {e['warning']}")
    return EXIT_OK


def _tick(ms: int) -> str:
    # Cron ticks fall on whole seconds: the milliseconds of fmt.timestamp would only add noise.
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_health(client: "Client", args: argparse.Namespace) -> int:
    """``shoal health``: one line per problem; exit 0 only when there is none."""
    stats = client.stats()
    problems = health_problems(stats, getattr(stats, "unrouted", {}))
    if args.json:
        print(fmt.to_json({"ok": not problems, "problems": problems}, indent=2))
    elif problems:
        print("\n".join(problems))
    else:
        print(f"ok: broker at {client.endpoint} answers; no group starves; every job has a route")
    return EXIT_OK if not problems else EXIT_FAILED


def health_problems(stats: dict[str, dict[str, Any]], unrouted: dict[str, int]) -> list[str]:
    """What is wrong, group by group, in words a person on call can act on."""
    problems = []
    for group, row in sorted(stats.items()):
        if row.get("starvation"):
            why = "no worker" if not row.get("workers") else "no free slot"
            problems.append(f"group {group} is starving: {row['pending']} pending, oldest "
                            f"{fmt.duration(row.get('oldest_pending_s', 0))} old, {why}")
        if row.get("state") == "unhealthy":
            reason = fmt.first_line(str(row.get("reason") or ("crash loop" if row.get("crash_loop") else "")))
            problems.append(f"group {group} is unhealthy: {reason}")
    for workflow, count in sorted(unrouted.items()):
        problems.append(f"workflow {workflow} has {fmt.plural(count, 'unrouted job')}: no worker has announced "
                        f"it (start a worker whose --app defines it, or enqueue with group=)")
    return problems


def reader_gone() -> int:
    """After a ``BrokenPipeError`` on stdout: point stdout at /dev/null, so the interpreter's
    final flush cannot fail again with a traceback, and return the exit code SIGPIPE would give."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to flush
        pass
    return EXIT_SIGPIPE
