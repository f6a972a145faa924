"""Shoal against its peers, side by side, in one run on this machine.

    bash scripts/peers/setup.sh            # once: Debian servers + scripts/peers/.venv
    python scripts/peers/run.py [--quick] [--repeat N] [--only NAMES] [--write] [--json]

(run.py re-executes itself with ``scripts/peers/.venv/bin/python``, which has the peers and
Shoal.) The same workload (``workload.py``) runs against every system in ``VARIANTS``: one
client process (``client.py``) and one worker process, a no-op task. Every system gets
fresh servers for each of its runs, started here on 127.0.0.1 on free ports with their data
under the run's temp dir (``--tmp``, default ``$SHOAL_BENCH_TMP`` or ``/tmp``: keep it on the
disk you mean to measure), and stopped by pid at the end, on error and on Ctrl-C. The floor
of a durable enqueue (one raw zmq round trip + one synced LMDB commit) is measured in the
same run. The table shows medians over ``--repeat`` runs (default 3, 1 with ``--quick``);
``--write`` puts it between ``<!-- peers:begin -->`` and ``<!-- peers:end -->`` at the top
of BENCHMARKS.md. A system that fails to install, start or run is a row saying why.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_PYTHON = HERE / ".venv" / "bin" / "python"


def in_peers_venv() -> None:
    """Re-execute under the peers venv (it has the peers; the dev venv must not)."""
    if Path(sys.prefix).resolve() != (HERE / ".venv").resolve():
        if not VENV_PYTHON.exists():
            sys.exit(f"run.py: {VENV_PYTHON} is missing: run `bash {HERE / 'setup.sh'}` first")
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


in_peers_venv()
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import servers  # noqa: E402
from workload import floor, progress  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One system in one configuration: its adapter module, its servers, what makes it durable."""

    name: str
    label: str
    module: str
    broker: str | None  # "redis" | "redis-aof" | "rabbitmq" | "postgres" | None
    durability: str
    results: str | None = None  # a Redis for results when the broker is not one
    durable: bool = False
    note: str = ""  # what a reader needs to read its figures right


REDIS = "none: Redis defaults (RDB snapshots), an acked job can be lost"
AOF = "Redis `appendonly yes`, `appendfsync always`"
RABBIT = "RabbitMQ durable queue, persistent messages, publisher confirms; results in Redis AOF"


def on_redis(system: str, label: str, note: str = "") -> list[Variant]:
    """A system on Redis as shipped, then on Redis with every write fsynced."""
    return [Variant(f"{system}-redis", f"{label} / Redis", f"sys_{system}", "redis", REDIS, note=note),
            Variant(f"{system}-redis-aof", f"{label} / Redis AOF", f"sys_{system}", "redis-aof", AOF, durable=True,
                    note=note)]


def on_rabbitmq(system: str, label: str) -> Variant:
    return Variant(f"{system}-rabbitmq", f"{label} / RabbitMQ", f"sys_{system}", "rabbitmq", RABBIT,
                   results="redis-aof", durable=True)


VARIANTS = [
    Variant("shoal", "Shoal", "sys_shoal", None, "write-ahead file synced before the ack (fdatasync), LMDB commit every 50 ms", durable=True),
    *on_redis("celery", "Celery"),
    on_rabbitmq("celery", "Celery"),
    *on_redis("rq", "RQ", note="its default worker forks a child per job and runs one job at a time"),
    *on_redis("dramatiq", "Dramatiq"),
    on_rabbitmq("dramatiq", "Dramatiq"),
    *on_redis("huey", "Huey", note="`notify_result=True`: a waiting caller blocks on BLPOP instead of polling"),
    Variant("taskito-sqlite", "taskito / SQLite", "sys_taskito", None,
            "SQLite as taskito ships it: WAL, `synchronous = NORMAL` (no fsync per commit)",
            note="its worker looks for new jobs every 50 ms (`scheduler_poll_interval_ms`, default); "
                 "`result()` polled every 1 ms"),
    Variant("pgqueuer-postgres", "pgqueuer / PostgreSQL", "sys_pgqueuer", "postgres",
            "PostgreSQL `fsync = on`, `synchronous_commit = on`", durable=True,
            note="its worker buffers completions and writes them every 0.1 s (default); waits by its "
                 "CompletionWatcher (LISTEN/NOTIFY, debounce 1 ms)"),
]


def params(quick: bool, concurrency: int) -> dict[str, Any]:
    if quick:
        return {"seq_n": 200, "threads": 16, "per_thread": 20, "bulk_total": 3_000, "bulk_batch": 1_000,
                "e2e_n": 200, "rt_samples": 50, "rt_warmup": 10, "zmq_samples": 500, "commit_samples": 50,
                "concurrency": concurrency}
    return {"seq_n": 2_000, "threads": 16, "per_thread": 250, "bulk_total": 20_000, "bulk_batch": 1_000,
            "e2e_n": 2_000, "rt_samples": 500, "rt_warmup": 50, "zmq_samples": 3_000, "commit_samples": 300,
            "concurrency": concurrency}


def _server(kind: str, root: Path) -> servers.Server:
    if kind.startswith("redis"):
        return servers.Redis(root, durable=kind == "redis-aof")
    if kind == "rabbitmq":
        return servers.RabbitMQ(root)
    if kind == "postgres":
        return servers.Postgres(root)
    raise ValueError(f"unknown server kind {kind!r}")


def start_server(kind: str, root: Path, attempts: int = 3) -> servers.Server:
    """Start a server of ``kind``, on fresh ports each try: a port picked free can be taken (by
    another connection's ephemeral port) before the server binds it, so a start that fails on
    ``eaddrinuse`` is tried again, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        server = _server(kind, root)
        try:
            return server.start()
        except BaseException as exc:
            server.stop()
            said = str(exc).lower()
            taken = isinstance(exc, servers.ServerError) and ("eaddrinuse" in said or "address already in use" in said)
            if not taken or attempt == attempts:
                raise
            progress(f"  {kind}: its port was taken meanwhile; starting it again on other ports")
    raise ValueError(f"attempts must be at least 1, not {attempts}")


class Runner:
    """Runs one variant once: its servers, its client process; remembers the servers' versions."""

    def __init__(self, root: Path, p: dict[str, Any], phases: str, timeout_s: float) -> None:
        self.root, self.p, self.phases, self.timeout_s = root, p, phases, timeout_s
        self.server_versions: dict[str, str] = {}

    def run(self, variant: Variant, n: int) -> dict[str, Any]:
        started: list[servers.Server] = []
        work = self.root / f"{variant.name}-{n}"
        work.mkdir()
        env = dict(os.environ, PEERS_DIR=str(work), PEERS_CONCURRENCY=str(self.p["concurrency"]),
                   SHOAL_BENCH_TMP=str(work), PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
        try:
            for role, kind in (("BROKER_URL", variant.broker), ("RESULT_URL", variant.results)):
                if kind is not None:
                    server = start_server(kind, self.root)
                    started.append(server)
                    env[f"PEERS_{role}"] = server.url()
                    self.server_versions[kind] = server.version()
            return self._client(variant, env, work)
        except servers.ServerError as exc:
            return {"error": f"server did not start: {exc}"}
        finally:
            for server in started:
                server.stop()

    def _client(self, variant: Variant, env: dict[str, str], work: Path) -> dict[str, Any]:
        log = work / "client.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, str(HERE / "client.py"), variant.module, json.dumps(self.p),
                                     self.phases], stdout=subprocess.PIPE, stderr=err, env=env, cwd=work, text=True)
            try:
                out, _ = proc.communicate(timeout=self.timeout_s)
            except BaseException:  # timeout or Ctrl-C: stop it by pid; its finally stops its worker
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                raise
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
            return {"error": f"client exited {proc.returncode} with no figures: {tail}"}
        return json.loads(lines[-1])


def select(only: str | None) -> list[Variant]:
    if not only:
        return VARIANTS
    names = {v.name for v in VARIANTS}
    wanted = [w.strip() for w in only.split(",") if w.strip()]

    def matches(v: Variant, w: str) -> bool:  # a full name is itself; anything else is a prefix
        return v.name == w or (w not in names and v.name.startswith(w + "-"))

    chosen = [v for v in VARIANTS if any(matches(v, w) for w in wanted)]
    unknown = [w for w in wanted if not any(matches(v, w) for v in VARIANTS)]
    if unknown:
        sys.exit(f"run.py: unknown --only {', '.join(unknown)}; names: {', '.join(v.name for v in VARIANTS)}")
    return chosen


def median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the runs that gave figures; the errors of the others."""
    good = [r["figures"] for r in runs if "figures" in r]
    errors = [r["error"] for r in runs if "error" in r]
    keys = sorted({k for fig in good for k in fig})
    return {"median": {k: statistics.median(f[k] for f in good if k in f) for k in keys},
            "each": [r.get("figures") for r in runs],  # by round (None: that run failed)
            "runs": len(runs), "ok": len(good), "errors": errors}


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # the finally blocks stop every server by pid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="Shoal and its peers, side by side.")
    parser.add_argument("--quick", action="store_true", help="small N, one repetition: a smoke test")
    parser.add_argument("--repeat", type=int, help="runs per system, medians shown (default 3, 1 with --quick)")
    parser.add_argument("--only", metavar="NAMES", help="comma-separated names or prefixes: "
                        + ", ".join(v.name for v in VARIANTS))
    parser.add_argument("--phases", default="", help="comma-separated subset of seq,threads,bulk,e2e,rt")
    parser.add_argument("--concurrency", type=int, default=8, help="the worker's threads or slots (default 8)")
    parser.add_argument("--tmp", default=os.environ.get("SHOAL_BENCH_TMP", "/tmp"), help="where data dirs go")
    parser.add_argument("--write", action="store_true", help="replace the peers section of BENCHMARKS.md")
    parser.add_argument("--json", action="store_true", help="print every run as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    variants, p = select(args.only), params(args.quick, args.concurrency)
    root = Path(tempfile.mkdtemp(prefix="peers-run-", dir=args.tmp))
    info = report.machine(root, argv)
    runner = Runner(root, p, args.phases, timeout_s=300 if args.quick else 1800)
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    floors: list[dict[str, float]] = []
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`&`)
    try:
        for n in range(repeat):
            progress(f"run {n + 1} of {repeat}")
            floors.append(floor(p, root))
            for v in variants:
                progress(f"{v.label}")
                runs[v.name].append(runner.run(v, n))
                if "error" in runs[v.name][-1]:
                    progress(f"  FAILED: {runs[v.name][-1]['error']}")
    except KeyboardInterrupt:
        progress("interrupted: servers stopped, nothing written")
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            progress(f"kept {root}")
    info["wall_s"] = time.monotonic() - started
    info["loadavg_end"] = os.getloadavg()
    info["servers"] = runner.server_versions
    results = {v.name: median_figures(runs[v.name]) for v in variants}
    floor_median = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    text = report.render(variants, results, floor_median, info, p, repeat, floors)
    print(text)
    if args.json:
        print(json.dumps({"info": info, "params": p, "floor": floors, "runs": runs}, indent=2, default=str))
    if args.write:
        path = report.write_section(text)
        progress(f"wrote the peers section of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
