"""``shoal``: inspect and administer a running broker (status, jobs, dead letters, requeue, enqueue).

Thin by design: parse the flags, open a ``Client``, call one method, print. Exit codes:
0 done, 1 the request failed (unknown job, not dead, job did not complete, any
``ShoalError``), 2 a usage or config error (nothing was sent), 3 the broker did not answer,
141 the reader of the output went away (``shoal job ID | head``), as for a command killed by SIGPIPE.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shoal import cli_format as fmt
from shoal.cli_ops import cmd_cron, cmd_health, reader_gone
from shoal.endpoints import DEFAULT_ENDPOINT, resolve_endpoint
from shoal.errors import BrokerUnreachable, ConfigError, ShoalError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
ACTIVE_STATES = ("pending", "scheduled", "running")
# Commands that later issues implement: listed in --help, honest about being absent.
if TYPE_CHECKING:  # the client is imported late: it pulls in zmq, which --help does not need
    from shoal.client import Client, Result

Handler = Callable[["Client", argparse.Namespace], int]


class UsageError(Exception):
    """A flag or argument that makes no sense; reported before anything is sent."""


# --- argument types ------------------------------------------------------------------
def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, found {text!r}") from None
    if not value >= 0 or value == float("inf"):  # `not >=` also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, found {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, found {value}")
    return value


# --- the parser ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``shoal`` argument parser with every subcommand registered."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--broker", metavar="ENDPOINT",
                        help=f"broker endpoint (default: SHOAL_BROKER, else [broker] bind from the config, "
                             f"else {DEFAULT_ENDPOINT})")
    common.add_argument("--config", metavar="FILE", help="config file (default: SHOAL_CONFIG, else ./shoal.toml)")
    common.add_argument("--timeout", type=_seconds, default=5.0, metavar="S",
                        help="seconds to wait for the broker to answer (default 5)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument("--key", dest="curve_key", metavar="FILE",
                        help="your secret CURVE key, NAME.key_secret (default SHOAL_KEY, else [security] key)")
    common.add_argument("--broker-key", dest="broker_key", metavar="FILE",
                        help="the broker's public CURVE key (default SHOAL_BROKER_KEY, else [security] "
                             "broker_public_key)")

    parser = argparse.ArgumentParser(prog="shoal", description="Inspect and administer a Shoal broker.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        cmd.set_defaults(handler=handler)
        return cmd

    add("status", cmd_status,
        "per-group queue depths, workers and counters (FAILED ATTEMPTS counts attempts, not jobs)")
    jobs = add("jobs", cmd_jobs, "active jobs (pending, scheduled, running), oldest first")
    jobs.add_argument("--state", choices=ACTIVE_STATES, help="only jobs in this state (default: all three)")
    jobs.add_argument("--group", metavar="G", help="only this group's jobs")
    jobs.add_argument("--limit", type=_positive_int, default=100, metavar="N", help="at most N jobs (default 100)")
    job = add("job", cmd_job, "everything about one job; `shoal job why ID`: its whole history from the log")
    job.add_argument("id", metavar="ID", help="the job id (or `why`, then the id)")
    job.add_argument("why_id", nargs="?", help=argparse.SUPPRESS)  # `job why ID`: see _check
    dead = add("dead", cmd_dead, "dead letters: jobs that ran out of retries or failed permanently")
    dead.add_argument("--group", metavar="G", help="only this group's dead letters")
    dead.add_argument("--limit", type=_positive_int, default=1000, metavar="N", help="at most N jobs (default 1000)")
    requeue = add("requeue", cmd_requeue, "put dead jobs back in their queue with a fresh retry budget")
    requeue.add_argument("id", metavar="ID", nargs="?", help="the dead job to requeue")
    requeue.add_argument("--all", action="store_true", help="every dead job (of --group)")
    requeue.add_argument("--group", metavar="G", help="with --all: only this group's dead jobs")
    enqueue = add("enqueue", cmd_enqueue, "enqueue one job and print its id")
    enqueue.add_argument("name", metavar="NAME", help="workflow name")
    enqueue.add_argument("payload", metavar="JSON", help="the payload, as JSON")
    enqueue.add_argument("--group", metavar="G", help="the group to run it in (default: the learned route)")
    enqueue.add_argument("--delay", type=_seconds, metavar="S", help="run no sooner than S seconds from now")
    enqueue.add_argument("--priority", type=int, default=0, metavar="N", help="higher runs first (default 0)")
    enqueue.add_argument("--dedup-key", dest="key", metavar="K",
                         help="deduplication key (while a job with it is active, its id is returned instead)")
    enqueue.add_argument("--wait", action="store_true", help="wait for the job to finish and print its result")
    enqueue.add_argument("--wait-timeout", type=_seconds, default=60.0, metavar="S",
                         help="with --wait: give up after S seconds (default 60)")
    cancel = add("cancel", cmd_cancel, "cancel a job (pending or scheduled at once; running: its worker stops it)")
    cancel.add_argument("id", metavar="ID", help="the job to cancel")
    add("storage", cmd_storage, "sizes of the state, the log and the snapshots")
    add("cron", cmd_cron, "cron entries with their last fire time and next three")
    add("health", cmd_health,
        "exit 0 when the broker answers, no group starves or is unhealthy, and every job has a route")
    events = add("events", cmd_events, "tail lifecycle events (queued, started, completed, failed, ...)")
    events.add_argument("--group", metavar="G", help="only this group's events")
    events.add_argument("--workflow", metavar="NAME", help="only this workflow's events")
    events.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")
    events.add_argument("--idle", type=_seconds, metavar="S", help="stop after S seconds without an event")
    # `config` is dispatched before parsing (see main); this entry only shows it in `shoal --help`.
    sub.add_parser("config", help="show the effective configuration (shoal config --show --help)", add_help=False)
    sub.add_parser("dashboard", help="serve a live web dashboard (shoal dashboard --help)", add_help=False)
    sub.add_parser("keygen", help="make a CURVE key pair NAME.key and NAME.key_secret (shoal keygen --help)",
                   add_help=False)
    return parser


# --- entry point ---------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``shoal`` command; returns the exit code (see the module docstring)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "config":
        from shoal.conf.show import main as config_main

        return config_main(args_list[1:])
    if args_list and args_list[0] == "dashboard":  # a server, not a one-shot client call
        from shoal.dashboard.cli import main as dashboard_main

        return dashboard_main(args_list[1:])
    if args_list and args_list[0] == "keygen":  # no broker involved
        from shoal.cli_keygen import main as keygen_main

        return keygen_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits on --help and usage errors; return the code instead
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `shoal job ID | head`: the reader left, which is not an error of ours
        return reader_gone()


def _run(args: argparse.Namespace) -> int:
    prog = f"shoal {args.command}"
    try:
        _check(args)
        endpoint = resolve_endpoint(args.broker, args.config)
    except (UsageError, ConfigError) as exc:  # the user's to fix, and nothing was sent
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from shoal.client import Client

    try:
        with Client(endpoint, timeout=args.timeout, key=args.curve_key, broker_key=args.broker_key,
                    config=args.config) as client:
            handler: Handler = args.handler
            return handler(client, args)
    except BrokerUnreachable as exc:
        print(f"{prog}: {exc} (is the broker running? pick another with --broker or SHOAL_BROKER; with "
              f"transport security on, a key the broker does not allow gets no answer either)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConfigError as exc:  # a key file that cannot be read: nothing was sent
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShoalError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _check(args: argparse.Namespace) -> None:
    """Checks argparse cannot express; raise ``UsageError`` before any connection is made."""
    if args.command == "job":  # `job ID` or `job why ID` (a job id is never "why")
        args.why = args.id == "why"
        if args.why_id is not None and not args.why:
            raise UsageError("expected `shoal job ID` or `shoal job why ID`")
        if args.why and args.why_id is None:
            raise UsageError("`shoal job why` needs a job ID")
        args.id = args.why_id if args.why else args.id
    if args.command == "requeue":
        if args.all == (args.id is not None):
            raise UsageError("give either a job ID or --all")
        if args.group is not None and not args.all:
            raise UsageError("--group applies only with --all")
    if args.command == "enqueue":
        try:
            args.payload = json.loads(args.payload)
        except json.JSONDecodeError as exc:
            raise UsageError(f"the payload is not valid JSON: {exc}") from None


def _emit_json(value: Any) -> None:
    print(fmt.to_json(value, indent=2))


def _result_dict(result: "Result") -> dict[str, Any]:
    return dataclasses.asdict(result)


# --- commands --------------------------------------------------------------------------
def cmd_cancel(client: "Client", args: argparse.Namespace) -> int:
    """``shoal cancel ID``."""
    outcome = client.cancel(args.id)
    if args.json:
        _emit_json(dataclasses.asdict(outcome))
    else:
        print(f"{args.id}: {outcome.message}")
    return EXIT_OK if outcome.cancelled else EXIT_FAILED


def cmd_storage(client: "Client", args: argparse.Namespace) -> int:
    """``shoal storage``."""
    info = client.storage()
    if args.json:
        _emit_json(info)
        return EXIT_OK
    mib = lambda n: f"{n / 2**20:,.1f} MiB"  # noqa: E731
    cap = mib(info["max_bytes"]) if info["max_bytes"] else "none (the disk)"
    print(f"data      {info['path']}")
    print(f"state     {mib(info['used_bytes'])} in live pages; file {mib(info['file_bytes'])}; "
          f"map {mib(info['map_bytes'])}; max_size {cap}"
          + ("; REFUSING ENQUEUES (storage full)" if info.get("refusing_enqueues") else ""))
    if "disk_room_bytes" in info:
        print(f"disk      {mib(info['disk_room_bytes'])} of room (free on the disk + reusable pages); "
              f"enqueues refused below min_free_disk {mib(info['min_free_disk_bytes'])}")
    entries = info["entries"]
    print(f"tables    {entries['jobs']:,} jobs, {entries['steps']:,} steps, {entries['expiry']:,} awaiting expiry")
    print(f"log       {entries['log']:,} entries, seq {info['log_first_seq']:,}..{info['log_last_seq']:,}")
    wal = info.get("wal")
    if wal and wal["write_ahead"]:
        print(f"wal       {mib(wal['bytes'])} file; {wal['batches']:,} batches ({mib(wal['used_bytes'])}) "
              "acked since LMDB's last checkpoint")
    elif wal:
        print("wal       off (write_ahead = false): every batch is its own synced LMDB commit")
    for snap in info["snapshots"]:
        print(f"snapshot  {snap['name']}  seq {snap['seq']:,}  {mib(snap['bytes'])}")
    if not info["snapshots"]:
        print("snapshot  none yet")
    return EXIT_OK


def cmd_events(client: "Client", args: argparse.Namespace) -> int:
    """``shoal events``: one line per lifecycle event as it happens."""
    seen = 0
    for event in client.events(group=args.group, workflow=args.workflow, timeout=args.idle):
        if args.json:
            print(fmt.to_json(event), flush=True)
        else:
            extra = " ".join(f"{k}={fmt.truncated(str(v), 80)}" for k, v in event.items()
                             if k in ("duration_ms", "error", "worker", "error_kind") and v is not None)
            print(f"{fmt.timestamp(event['ts_ms'])} {event['event']:<11} {event['id']} {event['workflow']} "
                  f"[{event['group']}] attempt={event['attempt']} {extra}".rstrip(), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return EXIT_OK


def cmd_status(client: "Client", args: argparse.Namespace) -> int:
    """``shoal status``: one row per group, then the workflows no worker has announced yet."""
    stats = client.stats()
    if args.json:
        _emit_json({"groups": dict(stats), "unrouted": stats.unrouted})
        return EXIT_OK
    if not stats:
        print("no groups yet (none in the config, no jobs stored, no workers connected)")
    else:
        headers = ["GROUP", "STATE", "WORKERS", "FREE", "PENDING", "SCHEDULED", "RUNNING",
                   "COMPLETED", "FAILED ATTEMPTS", "DEAD", "OLDEST PENDING"]  # failed counts attempts, not jobs
        rows = [_status_row(name, counters) for name, counters in stats.items()]
        print("\n".join(fmt.table(headers, rows, right=range(2, 11))))
    if stats.unrouted:
        names = ", ".join(f"{name} ({fmt.plural(n, 'job')})" for name, n in sorted(stats.unrouted.items()))
        print(f"\nunrouted (no worker has announced these workflows yet): {names}")
    return EXIT_OK


def _status_row(name: str, c: dict[str, Any]) -> list[str]:
    oldest = fmt.duration(c.get("oldest_pending_s", 0.0)) if c.get("pending") else "-"
    counts = [c.get(k, 0) for k in ("workers", "free_slots", "pending", "scheduled", "running",
                                    "completed", "failed", "dead")]
    return [name, str(c.get("state", "?")), *map(str, counts), oldest]


def cmd_jobs(client: "Client", args: argparse.Namespace) -> int:
    """``shoal jobs``: active jobs, oldest first."""
    found = client.jobs(state=args.state, group=args.group, limit=args.limit)
    if args.json:
        _emit_json([_result_dict(r) for r in found])
        return EXIT_OK
    if not found:
        print("no active jobs" + _filters(args))
        return EXIT_OK
    now_ms = time.time() * 1000
    rows = [[r.id, r.workflow, r.group or "(unrouted)", r.status, str(r.attempts),
             fmt.duration((now_ms - r.created_ms) / 1000)] for r in found]
    print("\n".join(fmt.table(["ID", "WORKFLOW", "GROUP", "STATE", "ATTEMPTS", "AGE"], rows, right=(4, 5))))
    if len(found) == args.limit:
        print(f"(first {args.limit}; raise --limit to see more)")
    return EXIT_OK


def _filters(args: argparse.Namespace) -> str:
    said = [f"{flag} {value}" for flag, value in (("state", getattr(args, "state", None)),
                                                  ("group", args.group)) if value]
    return f" ({', '.join(said)})" if said else ""


def cmd_job(client: "Client", args: argparse.Namespace) -> int:
    """``shoal job ID``: everything the broker knows about one job (``job why ID``: its history)."""
    if getattr(args, "why", False):
        from shoal.cli_why import cmd_job_why

        return cmd_job_why(client, args)
    result = client.get(args.id)
    if result is None:
        print(f"shoal job: no job with id {args.id} (never enqueued, or expired)", file=sys.stderr)
        return EXIT_FAILED
    steps = client.steps(args.id)
    if args.json:
        _emit_json({**_result_dict(result), "steps": [dataclasses.asdict(s) for s in steps]})
        return EXIT_OK
    print("\n".join(fmt.job_lines(result, time.time() * 1000)))
    if steps:
        rows = [[s.name, s.status, str(s.attempts), fmt.duration(s.duration_ms / 1000),
                 fmt.truncated(fmt.to_json(s.value), 60) if s.error is None else fmt.first_line(s.error)]
                for s in steps]
        print("\nsteps:")
        print("\n".join(fmt.table(["STEP", "STATUS", "ATTEMPTS", "DURATION", "RESULT"], rows, right=(2, 3))))
    return EXIT_OK


def cmd_dead(client: "Client", args: argparse.Namespace) -> int:
    """``shoal dead``: jobs that ran out of retries or failed permanently."""
    found = client.dead_letters(group=args.group, limit=args.limit)
    if args.json:
        _emit_json([_result_dict(r) for r in found])
        return EXIT_OK
    if not found:
        print("no dead letters" + _filters(args))
        return EXIT_OK
    rows = [[r.id, r.workflow, r.group, str(r.attempts), fmt.first_line(r.error)] for r in found]
    print("\n".join(fmt.table(["ID", "WORKFLOW", "GROUP", "ATTEMPTS", "ERROR"], rows, right=(3,))))
    return EXIT_OK


def cmd_requeue(client: "Client", args: argparse.Namespace) -> int:
    """``shoal requeue ID | --all [--group G]``: dead jobs back in their queue, same ids."""
    if args.all:
        count = client.requeue_all(group=args.group)
    elif client.requeue(args.id):
        count = 1
    else:
        current = client.get(args.id)
        why = "no such job (never enqueued, or expired)" if current is None else f"it is {current.status}, not dead"
        print(f"shoal requeue: job {args.id} was not requeued: {why}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _emit_json({"requeued": count})
    else:
        print(f"requeued {fmt.plural(count, 'job')}" + _filters(args))
    return EXIT_OK


def cmd_enqueue(client: "Client", args: argparse.Namespace) -> int:
    """``shoal enqueue NAME JSON``: print the job id; with ``--wait`` also its result."""
    job_id = client.enqueue(args.name, args.payload, group=args.group, delay=args.delay,
                            priority=args.priority, key=args.key)
    if not args.wait:
        if args.json:
            _emit_json({"id": job_id})
        else:
            print(job_id)
        return EXIT_OK
    if not args.json:
        print(job_id, flush=True)  # the id is useful (shoal job ID) even if the wait times out
    result = client.wait(job_id, timeout=args.wait_timeout)
    if args.json:
        _emit_json(_result_dict(result))
    elif result.status == "completed":
        print(f"completed: {fmt.to_json(result.value)}")
    else:
        error = f": {fmt.first_line(result.error)}" if result.error else ""
        print(f"{result.status} after {fmt.plural(result.attempts, 'attempt')}{error}")
    return EXIT_OK if result.status == "completed" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
