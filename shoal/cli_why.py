"""``shoal job why ID``: one job's whole history, from the broker's log.

Every logged transition with its time (UTC, ms), op, the job's state and attempt
after it, the worker and lease token of the run it belongs to, and the error of a
failure, so "what happened to this job?" has an answer after the fact (even once
the job's record has expired, until the log is compacted).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from shoal import cli_format as fmt

if TYPE_CHECKING:
    from shoal.client import Client
    from shoal.client.client import HistoryEntry

HEADERS = ["SEQ", "TIME (UTC)", "OP", "STATE", "ATTEMPT", "WORKER", "LEASE", "WHAT"]


def cmd_job_why(client: "Client", args: argparse.Namespace) -> int:
    """Print the history table (or JSON); exit 1 when the log has nothing on the job."""
    from shoal.errors import UnknownJob

    try:
        entries = client.history(args.id)
    except UnknownJob as exc:
        print(f"shoal job why: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(fmt.to_json({"id": args.id, "history": [dataclasses.asdict(e) for e in entries]}, indent=2))
        return 0
    count = f"{len(entries)} log {'entry' if len(entries) == 1 else 'entries'}"
    print(f"history of job {args.id} ({count}, oldest first)")
    print("\n".join(history_lines(entries)))
    return 0


def history_lines(entries: "list[HistoryEntry]") -> list[str]:
    """The history as an aligned table, one row per log entry."""
    rows = []
    for e in entries:
        what = e.detail
        if e.error:
            what = f"error: {fmt.first_line(e.error)}" + (f"; {what}" if what else "")
        rows.append([str(e.seq), fmt.timestamp(e.time_ms), e.op, e.state, str(e.attempt) if e.attempt else "-",
                     e.worker or "-", f"{e.token:016x}" if e.token else "-", fmt.truncated(what, 160)])
    return fmt.table(HEADERS, rows, right=(0, 4))
