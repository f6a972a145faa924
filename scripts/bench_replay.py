"""Recovery benchmarks (issue 7): how fast a log replays, and whether snapshots stall enqueues.

    python scripts/bench.py replay [--entries 1000000] [--repeat N] [--keep] [--json]
    python scripts/bench.py snapshot [--jobs 200000] [--samples 2000] [--min-snapshots 5] [--repeat N] [--keep] [--json]

``replay`` writes a synthetic but valid data directory straight through ``Store.commit``
(jobs enqueued, dispatched and completed: ``entries / 3`` jobs, 3,000 log entries per
synced commit, with the jobs, expiry and counters tables written in the same commits, as
the broker does), then times ``python -m shoal.broker replay`` as whole processes:
``--verify`` on that directory, ``--out NEWDIR`` from it, and ``--verify`` on NEWDIR.
Every one must exit 0 (the generated directory and the rebuilt one are each exactly what
their log rebuilds). Figures: log entries per second of wall time (interpreter start
included), per CPU second, the rate the tool reports itself, and peak memory.

``snapshot`` fills a data directory the same way with ``--jobs`` completed jobs (three log
entries each; retention 30 days, so none expires), then starts a broker (no workers,
log level info) on a fresh copy of it twice and times single ``enqueue`` calls from one
client: (a) with snapshots off (``snapshot_interval = "24h"``, ``snapshot_entries`` huge),
(b) with ``snapshot_interval = "0.05s"``, so a new snapshot starts as soon as the previous
one is done and one is nearly always being copied. (b) starts once the broker's first
snapshots are done (three: the first ``snapshot_keep`` = 2 write new files, as nothing can be
recycled yet, and hold the whole 600,000-entry log) and the log behind them is trimmed;
the enqueues timed until then are reported apart as (b0). (b) goes on past ``--samples`` until the
broker has logged ``--min-snapshots`` "snapshot at log seq" lines during the measurement.
The time between two consecutive such lines is one snapshot's length (its copy plus at most
the 0.05 s interval and one loop pass). Target (issue 7): p99 in (b) <= 2 x p99 in (a).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lmdb

from bench import (CONFIG_TOML, SCRIPTS, TMP_ROOT, Cluster, Proc, Row, machine, percentile, print_table,
                   progress, summarize, wait_until)  # scripts/ is on sys.path when this runs as a script
from shoal import jobs as J
from shoal.broker.storage.store import Batch, Store
from shoal.ids import new_job_id
from shoal.protocol import pack

DAY_MS = 86_400_000
SNAPSHOT_KEEP = 2            # the default snapshot_keep: from the third snapshot on, files are recycled
PER_COMMIT = 3_000          # log entries per synced commit while generating (the brief: a few thousand)
WORKER = "bench-host:4242:1"


# --- a synthetic data directory ------------------------------------------------------------
def write_synthetic(path: Path, entries: int, per_commit: int = PER_COMMIT, retention_ms: int = 30 * DAY_MS,
                    group: str = "bench") -> dict[str, float]:
    """A data directory whose log holds exactly ``entries`` entries: ``entries // 3`` jobs
    enqueued -> dispatched -> completed, plus one pending (remainder 1) or running
    (remainder 2) job. Jobs, expiry and counters are written with the log in each commit,
    so ``broker replay --verify`` passes. Returns what was written and how long it took."""
    started = time.perf_counter()
    jobs_total = entries // 3 + (1 if entries % 3 else 0)
    store = Store(str(path))
    try:
        wall = int(time.time() * 1000) - jobs_total  # about a millisecond per job, ending now
        completed = 0
        per_batch = max(1, per_commit // 3)
        rng = random.Random(7)
        for first in range(0, jobs_total, per_batch):
            batch = Batch()
            enq, dsp, cmp = [], [], []
            for i in range(first, min(first + per_batch, jobs_total)):
                wall += 1
                job_id = new_job_id()
                record = J.Job(id=job_id, workflow="noop", group=group, payload=pack({"i": i, "pad": "x" * 40}),
                               seq=i, created_ms=wall).to_record()
                enq.append(("enqueue", job_id, record))
                steps = 3 if i < entries // 3 else entries % 3  # the last job may stop early
                final = dict(record)
                if steps >= 2:
                    dispatch = {"state": J.RUNNING, "attempts": 1, "token": rng.getrandbits(62), "worker": WORKER,
                                "started_ms": wall}
                    final.update(dispatch)
                    dsp.append(("dispatch", job_id, dispatch))
                if steps == 3:
                    complete = {"state": J.COMPLETED, "value": pack({"ok": i}), "finished_ms": wall + 1,
                                "expire_ms": wall + 1 + retention_ms}
                    final.update(complete)
                    cmp.append(("complete", job_id, complete))
                    batch.expiry_add.append((complete["expire_ms"], job_id))
                    completed += 1
                batch.jobs[job_id] = final
            batch.log = enq + dsp + cmp  # as a broker logs a burst: enqueues, then dispatches, then results
            batch.counters[group] = {"completed": completed}
            store.commit(batch, wall)
        written = store.next_seq - 1
    finally:
        store.close()
    if written != entries:
        raise RuntimeError(f"wrote {written} log entries, meant {entries}")
    return {"gen_s": time.perf_counter() - started, "jobs": jobs_total, "completed": completed}


def dir_sizes(path: Path) -> dict[str, float]:
    """MiB: the data file, and the live pages of the log and of every other table together."""
    env = lmdb.open(str(path), readonly=True, max_dbs=16, lock=True)
    try:
        psize = env.stat()["psize"]
        mib = {"file_mib": os.path.getsize(path / "data.mdb") / 2**20, "log_mib": 0.0, "state_mib": 0.0}
        with env.begin() as txn:
            for name in (b"jobs", b"log", b"expiry", b"routes", b"counters", b"steps", b"meta"):
                st = txn.stat(env.open_db(name, txn=txn, create=False))
                size = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * psize / 2**20
                mib["log_mib" if name == b"log" else "state_mib"] += size
        return mib
    finally:
        env.close()


def broker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SCRIPTS), env.get("PYTHONPATH", "")] if p)
    for var in ("SHOAL_BROKER", "SHOAL_CONFIG", "SHOAL_DATA", "SHOAL_SERVER", "SHOAL_FAULT"):
        env.pop(var, None)
    return env


def replay_cli(args: list[str], log: Path, entries: int) -> dict[str, float]:
    """Run ``python -m shoal.broker replay ARGS`` as a whole process; it must exit 0.
    Wall seconds, CPU seconds, peak RSS and the rate the tool reported itself."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "shoal.broker", "replay", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=broker_env())
        _, status, usage = os.wait4(proc.pid, 0)
        wall_s = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"broker replay {' '.join(args)} exited {proc.returncode}:\n{text[-3000:]}")
    reported = re.findall(r"\(([\d.]+)s, ([\d,]+) entries/s\)", text)
    cpu_s = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall_s, "rate": entries / wall_s, "cpu_rate": entries / cpu_s, "cpu_s": cpu_s,
            "rss_mib": usage.ru_maxrss / 1024,
            "self_rate": float(reported[-1][1].replace(",", "")) if reported else float("nan")}


# --- replay -------------------------------------------------------------------------------
def run_replay(args: argparse.Namespace, run: int) -> dict[str, float]:
    n = args.entries
    root = Path(tempfile.mkdtemp(prefix=f"shoal-bench-replay-{run}-", dir=TMP_ROOT))
    fig: dict[str, float] = {}
    try:
        src, out = root / "data", root / "rebuilt"
        progress(f"writing a synthetic data directory of {n:,} log entries")
        gen = write_synthetic(src, n)
        fig["gen_rate"] = n / gen["gen_s"]
        fig.update({f"src_{k}": v for k, v in dir_sizes(src).items()})
        for key, cli, log in (("verify", ["--data", str(src), "--verify"], "verify-src.log"),
                              ("out", ["--data", str(src), "--out", str(out)], "out.log"),
                              ("verify_rebuilt", ["--data", str(out), "--verify"], "verify-rebuilt.log")):
            progress(f"broker replay {' '.join(cli)}")
            for name, value in replay_cli(cli, root / log, n).items():
                fig[f"{key}_{name}"] = value
        fig.update({f"out_{k}": v for k, v in dir_sizes(out).items()})
    finally:
        if args.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return fig


def replay_rows(args: argparse.Namespace) -> list[Row]:
    n = f"{args.entries:,}"
    rows = [Row(f"writing the synthetic dir ({n} entries, Store.commit, {PER_COMMIT:,}/commit)", "gen_rate",
                "entries/s", note="{src_file_mib:.0f} MiB data.mdb: log {src_log_mib:.0f} MiB, "
                                  "other tables {src_state_mib:.0f} MiB")]
    for key, what in (("verify", "replay --verify (generated dir)"), ("out", "replay --out NEWDIR"),
                      ("verify_rebuilt", "replay --verify (rebuilt dir)")):
        extra = ("; NEWDIR {out_file_mib:.0f} MiB (log {out_log_mib:.0f}, other {out_state_mib:.0f})"
                 if key == "out" else "")
        rows += [Row(f"{what}, whole process", f"{key}_rate", "entries/s",
                     note=f"{{{key}_wall_s:.1f}} s wall, {{{key}_cpu_s:.1f}} CPU s, peak RSS {{{key}_rss_mib:.0f}} MiB"
                          + extra),
                 Row("  per CPU second", f"{key}_cpu_rate", "entries/s"),
                 Row("  as the tool reports it (no interpreter start)", f"{key}_self_rate", "entries/s")]
    return rows


# --- snapshot -----------------------------------------------------------------------------
SNAPSHOT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*snapshot at log seq (\d+)", re.M)


def snapshot_times(log_text: str) -> list[float]:
    """Unix times of the broker's "snapshot at log seq" lines (logging's asctime is local time)."""
    return [datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() for stamp, _ in
            SNAPSHOT_LINE.findall(log_text)]


def snapshot_toml(on: bool) -> str:
    settings = ('snapshot_interval = "0.05s"\n' if on else
                'snapshot_interval = "24h"\nsnapshot_entries = 1000000000\n')
    return CONFIG_TOML.replace("[broker]\n", "[broker]\n" + settings)


def first_snapshot_latencies(client: Any, broker: Proc, args: argparse.Namespace) -> list[float]:
    """Enqueue latencies while the first snapshots are made: new files (nothing to recycle yet),
    the whole log, then its trim; until the snapshots are steady."""
    startup: list[float] = []
    startup_start = time.time()
    while True:
        t0 = time.perf_counter()
        client.enqueue("noop", {"i": -len(startup)}, group="idle")
        startup.append((time.perf_counter() - t0) * 1000)
        if len(startup) % 100 == 0:
            if time.time() - startup_start > args.max_seconds:
                raise RuntimeError(f"no steady snapshots after {args.max_seconds}s:\n{broker.output()[-3000:]}")
            if len(snapshot_times(broker.output())) >= SNAPSHOT_KEEP + 1 and client.storage()["entries"]["log"] < 10_000:
                return startup


def measure_enqueues(pristine: Path, on: bool, args: argparse.Namespace, run: int) -> dict[str, Any]:
    """Single-enqueue latencies against a broker on a fresh copy of ``pristine``."""
    name = f"snap-{'on' if on else 'off'}-{run}"
    with Cluster(name, keep=args.keep) as c:
        c.config.write_text(snapshot_toml(on))
        shutil.copytree(pristine, c.dir / "data")
        (c.dir / "data" / "broker.lock").unlink(missing_ok=True)
        log = c.dir / "broker.log"
        cmd = [sys.executable, "-m", "shoal.broker", "--config", str(c.config), "--data", str(c.dir / "data"),
               "--bind", "tcp://127.0.0.1:*", "--no-supervise", "--log-level", "info"]
        c.broker = broker = Proc(cmd, log, c.env, c.dir)
        started_at = time.time()

        def listening() -> Any:
            if not broker.alive():
                raise RuntimeError(f"the broker exited:\n{broker.output()}")
            return re.search(r"listening on (\S+)", broker.output())

        c.endpoint = wait_until(listening, 120, "the broker to listen").group(1)
        listening_s = time.time() - started_at
        client = c.client(timeout_s=60)
        for i in range(200):  # warm-up, not timed
            client.enqueue("noop", {"i": i}, group="idle")
        startup = first_snapshot_latencies(client, broker, args) if on else []
        latencies: list[float] = []
        t_start = time.time()
        deadline = time.monotonic() + args.max_seconds
        while True:
            t0 = time.perf_counter()
            client.enqueue("noop", {"i": len(latencies)}, group="idle")
            latencies.append((time.perf_counter() - t0) * 1000)
            if len(latencies) >= args.samples and len(latencies) % 100 == 0:
                if not on or sum(t >= t_start for t in snapshot_times(broker.output())) >= args.min_snapshots:
                    break
                if time.monotonic() > deadline:
                    progress(f"stopped after {args.max_seconds}s without {args.min_snapshots} snapshots")
                    break
        t_end = time.time()
        storage = client.storage()
        text = broker.output()
        if not broker.alive():
            raise RuntimeError(f"the broker died during the measurement:\n{text[-3000:]}")
    times = snapshot_times(text)
    during = [t for t in times if t_start <= t <= t_end]
    gaps = [b - a for a, b in zip(times, times[1:])]
    if on and not during:
        raise RuntimeError(f"no snapshot completed during the measurement:\n{text[-3000:]}")
    if not on and times:
        raise RuntimeError("a snapshot ran in the run meant to have none")
    return {"latencies": latencies, "startup": startup, "window_s": t_end - t_start, "listening_s": listening_s,
            "snapshots_during": len(during), "snapshots_total": len(times),
            "first_snapshot_s": times[0] - started_at if times else float("nan"),
            "gap_median_s": sorted(gaps)[len(gaps) // 2] if gaps else float("nan"),
            "log_entries_end": storage["entries"]["log"], "snapshot_mib": (storage["snapshots"] or [{"bytes": 0}])
            [-1]["bytes"] / 2**20}


def offline_snapshot_s(pristine: Path) -> tuple[float, float]:
    """One ``Store.take_snapshot`` of the pristine directory with nothing else running: (seconds, MiB)."""
    target = Path(tempfile.mkdtemp(prefix="shoal-bench-snapcopy-", dir=TMP_ROOT))
    try:
        store = Store(str(pristine), readonly=True)
        try:
            t0 = time.perf_counter()
            path, _ = store.take_snapshot(str(target))
            seconds = time.perf_counter() - t0
        finally:
            store.close()
        return seconds, os.path.getsize(os.path.join(path, "data.mdb")) / 2**20
    finally:
        shutil.rmtree(target, ignore_errors=True)


def run_snapshot(args: argparse.Namespace, run: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix=f"shoal-bench-snapstate-{run}-", dir=TMP_ROOT))
    try:
        pristine = root / "data"
        progress(f"writing a data directory holding {args.jobs:,} completed jobs")
        write_synthetic(pristine, args.jobs * 3)
        fig: dict[str, float] = {f"state_{k}": v for k, v in dir_sizes(pristine).items()}
        fig["offline_copy_s"], fig["offline_copy_mib"] = offline_snapshot_s(pristine)
        results = {}
        for on in (False, True):
            progress(f"single enqueues, snapshots {'back to back' if on else 'off'}")
            results[on] = measure_enqueues(pristine, on, args, run)
    finally:
        if args.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for on, label in ((False, "off"), (True, "on")):
        r = results[on]
        fig[f"{label}_p50_ms"] = percentile(r["latencies"], 50)
        fig[f"{label}_p99_ms"] = percentile(r["latencies"], 99)
        fig[f"{label}_max_ms"] = max(r["latencies"])
        fig[f"{label}_samples"] = len(r["latencies"])
        fig[f"{label}_listening_s"] = r["listening_s"]
    busy = results[True]
    fig["startup_p99_ms"] = percentile(busy["startup"], 99)
    fig["startup_samples"] = len(busy["startup"])
    fig["ratio_startup_p99"] = fig["startup_p99_ms"] / fig["off_p99_ms"]
    fig.update({"snapshots_during": busy["snapshots_during"], "window_s": busy["window_s"],
                "first_snapshot_s": busy["first_snapshot_s"], "gap_median_s": busy["gap_median_s"],
                "log_entries_end": busy["log_entries_end"], "snapshot_mib": busy["snapshot_mib"],
                "ratio_p99": fig["on_p99_ms"] / fig["off_p99_ms"], "ratio_p50": fig["on_p50_ms"] / fig["off_p50_ms"]})
    return fig


def snapshot_rows(args: argparse.Namespace) -> list[Row]:
    return [
        Row(f"state: {args.jobs:,} completed jobs, {args.jobs * 3:,} log entries", "state_file_mib", "MiB",
            note="log {state_log_mib:.0f} MiB, other tables {state_state_mib:.0f} MiB"),
        Row("one snapshot copy, offline (Store.take_snapshot)", "offline_copy_s", "s",
            note="{offline_copy_mib:.0f} MiB written"),
        Row("broker start -> first snapshot logged (b)", "first_snapshot_s", "s",
            note="the first one holds the whole log; broker listened after {on_listening_s:.1f} s"),
        Row("snapshot to snapshot, back to back (b), median", "gap_median_s", "s",
            note="{snapshot_mib:.0f} MiB each once the log is trimmed; {log_entries_end:.0f} log entries at the end"),
        Row("(a) enqueue p50, no snapshot", "off_p50_ms", "ms", note="n={off_samples:.0f}"),
        Row("(a) enqueue p99, no snapshot", "off_p99_ms", "ms", note="max {off_max_ms:.1f} ms"),
        Row("(b0) enqueue p99 over the broker's first snapshots", "startup_p99_ms", "ms",
            note="n={startup_samples:.0f}; new files (none to recycle yet), whole log, then its trim"),
        Row("p99 ratio (b0) / (a)", "ratio_startup_p99", "x", note="once per data dir: see BENCHMARKS.md"),
        Row("(b) enqueue p50, snapshots back to back", "on_p50_ms", "ms",
            note="n={on_samples:.0f} over {window_s:.1f} s, {snapshots_during:.0f} snapshots completed in it"),
        Row("(b) enqueue p99, snapshots back to back", "on_p99_ms", "ms", note="max {on_max_ms:.1f} ms"),
        Row("p50 ratio (b) / (a)", "ratio_p50", "x"),
        Row("p99 ratio (b) / (a)", "ratio_p99", "x", target=("<=", 2.0)),
    ]


# --- command line -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description="Recovery benchmarks (replay, snapshot).")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replay", help="broker replay --verify / --out rate on a synthetic log")
    rep.add_argument("--entries", type=int, default=1_000_000, help="log entries (default 1,000,000)")
    snap = sub.add_parser("snapshot", help="enqueue p50/p99 with and without snapshots running")
    snap.add_argument("--jobs", type=int, default=200_000, help="completed jobs in the state (default 200,000)")
    snap.add_argument("--samples", type=int, default=2_000, help="timed enqueues, at least (default 2,000)")
    snap.add_argument("--min-snapshots", type=int, default=5,
                      help="(b) goes on until this many snapshots completed while measuring (default 5)")
    snap.add_argument("--max-seconds", type=float, default=120.0, help="(b) gives up waiting for them after this")
    for p in (rep, snap):
        p.add_argument("--repeat", type=int, default=1, help="repeat the whole run N times, report medians (default 1)")
        p.add_argument("--json", action="store_true", help="print machine-readable figures")
        p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    info = machine()
    started = time.perf_counter()
    run_once, rows = (run_replay, replay_rows) if args.command == "replay" else (run_snapshot, snapshot_rows)
    runs = []
    for n in range(args.repeat):
        progress(f"run {n + 1} of {args.repeat}")
        runs.append(run_once(args, n))
    summary = summarize(runs)
    params = {k: v for k, v in vars(args).items() if k not in ("command", "json", "keep")}
    command = " ".join([args.command, *(f"--{k.replace('_', '-')} {v}" for k, v in params.items())])
    wall_s = time.perf_counter() - started
    if args.json:
        print(json.dumps({"command": command, "machine": info, "wall_s": wall_s,
                          "median": {k: v["median"] for k, v in summary.items()}, "runs": runs},
                         indent=2, sort_keys=True))
    else:
        print(f"shoal bench {command}: {info['nproc']} x {info['cpu']}, Python {info['python']}, "
              f"LMDB {info['lmdb']}, {info['tmp']} on {info['fs']}, load {info['loadavg']:.1f} at start, "
              f"{os.getloadavg()[0]:.1f} at end; {wall_s:.0f}s\n")
        print_table(rows(args), summary, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
