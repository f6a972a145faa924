"""Chaos run: a real broker SIGKILLed (or SIGSTOPped) at random moments under mixed load.

    python scripts/chaos.py [--mode kill|stop] [--kills N] [--stop-s S] [--seed N] [--workers 2]
                            [--concurrency 4] [--pause S] [--duration S] [--lease S]
                            [--final-timeout S] [--json FILE]

It makes a temp data dir and shoal.toml, starts a broker on a fixed loopback port (restarts keep
the endpoint and the data) and ``--workers`` workers loading ``scripts/chaos_app.py``, and runs
the producers of ``scripts/chaos_load.py`` (enqueue, enqueue_many, delayed, dedup keys, a share
failing once). At random moments the broker is SIGKILLed and restarted (``kill``) or frozen for
``--stop-s`` seconds (``stop``), N times. Then the load stops, every acknowledged job is awaited,
the checks of ``scripts/chaos_check.py`` run, the broker is stopped with SIGTERM and
``broker replay --verify`` must pass. Exit 1 when a check fails. docs/faults.md says more.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from chaos_check import Fault, Report, analyse, print_summary  # noqa: E402
from chaos_load import GROUP, Load  # noqa: E402

from shoal import Client  # noqa: E402

CONFIG_TOML = """
[broker]
heartbeat_interval = "{heartbeat}s"

[workflows]
retries = 3
backoff = "100ms"
backoff_max = "1s"
lease = "{lease}s"
"""


@dataclass
class Options:
    """One chaos run; the CLI flags, and what ``tests/test_chaos.py`` builds directly."""

    mode: str = "kill"
    kills: int = 10
    stop_s: float = 15.0
    seed: int = 1
    workers: int = 2
    concurrency: int = 4
    gap_s: tuple[float, float] = (2.0, 5.0)   # pause between the end of one fault and the next
    warmup_s: float = 3.0
    settle_s: float = 5.0                     # load kept running after the last fault
    lease_s: float = 10.0
    heartbeat_s: float = 1.0
    pause_s: float = 0.02                     # between calls of one producer thread
    fail_share: float = 0.2
    client_timeout_s: float = 10.0
    final_timeout_s: float = 180.0
    tmp_root: str | None = None


class Proc:
    """A broker or worker process with its log file under the run's directory."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.args, self.log = args, log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)
        self._fh.close()


def free_port() -> int:
    """A loopback port free right now, kept for every incarnation of the broker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    """The broker (restartable on the same port and data) and the workers of one run."""

    def __init__(self, opts: Options) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="shoal-chaos-", dir=opts.tmp_root))
        self.data, self.config, self.runs = self.dir / "data", self.dir / "shoal.toml", self.dir / "runs"
        self.runs.mkdir()
        self.config.write_text(CONFIG_TOML.format(heartbeat=opts.heartbeat_s, lease=opts.lease_s))
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_BROKER", "SHOAL_CONFIG")}
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in [str(SCRIPTS), self.env.get("PYTHONPATH", "")] if p)
        self.env["SHOAL_CHAOS_RUNS"] = str(self.runs)
        self.brokers: list[Proc] = []
        self.workers: list[Proc] = []

    @property
    def broker(self) -> Proc:
        return self.brokers[-1]

    def start_broker(self, timeout_s: float = 60.0) -> float:
        """Start a broker incarnation; returns the monotonic time it said it listens."""
        args = [sys.executable, "-m", "shoal.broker", "--config", str(self.config), "--data", str(self.data),
                "--bind", self.endpoint, "--no-supervise"]
        proc = Proc(args, self.dir / f"broker-{len(self.brokers) + 1:02d}.log", self.env)
        self.brokers.append(proc)
        deadline = time.monotonic() + timeout_s
        while "listening on" not in proc.text():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"broker did not start; see {proc.log}:\n{proc.text()[-2000:]}")
            time.sleep(0.01)
        return time.monotonic()

    def start_workers(self, count: int, concurrency: int, timeout_s: float = 60.0) -> None:
        """Start the workers and wait until the broker has seen each one's HELLO."""
        for n in range(count):
            args = [sys.executable, "-m", "shoal.worker", "--group", GROUP, "--app", "chaos_app",
                    "--connect", self.endpoint, "--concurrency", str(concurrency), "--config", str(self.config)]
            self.workers.append(Proc(args, self.dir / f"worker-{n + 1}.log", self.env))
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            while f":{w.popen.pid} joined group {GROUP}" not in self.broker.text():
                if not w.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not join; see {w.log}:\n{w.text()[-2000:]}")
                time.sleep(0.02)

    def kill_and_restart(self) -> Fault:
        """SIGKILL the broker, start a new one on the same port and data."""
        started = time.monotonic()
        self.broker.popen.send_signal(signal.SIGKILL)
        self.broker.popen.wait(10)
        return Fault("kill", started, self.start_broker())

    def freeze(self, seconds: float) -> Fault:
        """SIGSTOP the broker for ``seconds``, then SIGCONT."""
        started = time.monotonic()
        self.broker.popen.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        self.broker.popen.send_signal(signal.SIGCONT)
        return Fault("stop", started, time.monotonic())

    def stop_and_verify(self) -> tuple[bool, str]:
        """SIGTERM the broker (drain) and run ``broker replay --verify`` on its data."""
        self.broker.popen.send_signal(signal.SIGTERM)
        try:
            self.broker.popen.wait(60)
        except subprocess.TimeoutExpired:
            return False, "broker did not exit within 60 s of SIGTERM"
        done = subprocess.run([sys.executable, "-m", "shoal.broker", "replay", "--data", str(self.data), "--verify"],
                              capture_output=True, text=True, timeout=300, env=self.env)
        return done.returncode == 0, (done.stdout + done.stderr).strip()

    def broker_logs(self) -> str:
        return "".join(p.text() for p in self.brokers)

    def close(self) -> None:
        for p in self.workers + self.brokers:
            p.close()


def inject_faults(rig: Rig, opts: Options, rng: random.Random) -> list[Fault]:
    """The N faults at random moments (uniform gaps), the load running throughout."""
    faults = []
    for _ in range(opts.kills):
        time.sleep(rng.uniform(*opts.gap_s))
        faults.append(rig.kill_and_restart() if opts.mode == "kill" else rig.freeze(opts.stop_s))
    return faults


def await_final(endpoint: str, ids: list[str], timeout_s: float) -> dict[str, Any]:
    """Each id's final record (or its last state when the deadline passed; None if unknown)."""
    out: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    with Client(endpoint, timeout=30) as client:
        for job_id in ids:
            try:
                out[job_id] = client.wait(job_id, timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # not final in time, or unknown to the broker: show what it has
                out[job_id] = client.get(job_id)
    return out


def run(opts: Options) -> Report:
    """One whole chaos run; the processes are gone when it returns (their logs stay)."""
    rng = random.Random(opts.seed)
    rig = Rig(opts)
    load: Load | None = None
    try:
        rig.start_broker()
        rig.start_workers(opts.workers, opts.concurrency)
        pids = [w.popen.pid for w in rig.workers]
        load = Load(rig.endpoint, opts.seed, opts.pause_s, opts.fail_share, opts.client_timeout_s)
        load.start()
        time.sleep(opts.warmup_s)
        faults = inject_faults(rig, opts, rng)
        time.sleep(opts.settle_s)
        load.stop()
        ledger = load.ledger
        finals = await_final(rig.endpoint, sorted(ledger.acked), opts.final_timeout_s)
        unknown = await_final(rig.endpoint, sorted(ledger.unknown), 5.0) if ledger.unknown else {}
        workers_lived = all(w.alive() for w in rig.workers)
        verified = rig.stop_and_verify()
        return analyse(rig.dir, opts.mode, ledger, finals, unknown, faults, pids, workers_lived,
                       rig.broker_logs(), verified, (load.takes_id, load.takes_ids))
    finally:
        if load is not None:
            load.stop()  # idempotent; puts the client's id maker back even after an error
        rig.close()


def parse(argv: list[str] | None) -> tuple[Options, str | None]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["kill", "stop"], default="kill")
    ap.add_argument("--kills", type=int, default=10, help="how many faults (kills or stops)")
    ap.add_argument("--stop-s", type=float, default=15.0, help="how long each SIGSTOP lasts (mode stop)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, help="spread the faults over about this many seconds")
    ap.add_argument("--pause", type=float, default=0.02, help="seconds between calls of one producer thread")
    ap.add_argument("--lease", type=float, default=10.0, help="the groups' lease (s); default as shipped")
    ap.add_argument("--final-timeout", type=float, default=180.0, help="for every acked job to be final")
    ap.add_argument("--json", help="also write the report as JSON to this file")
    a = ap.parse_args(argv)
    opts = Options(mode=a.mode, kills=a.kills, stop_s=a.stop_s, seed=a.seed, workers=a.workers,
                   concurrency=a.concurrency, lease_s=a.lease, pause_s=a.pause, final_timeout_s=a.final_timeout)
    if a.duration:
        mean = max(0.5, a.duration / max(1, a.kills) - (a.stop_s if a.mode == "stop" else 1.0))
        opts.gap_s = (mean * 0.5, mean * 1.5)
    return opts, a.json


def main(argv: list[str] | None = None) -> int:
    opts, json_path = parse(argv)
    report = run(opts)
    print_summary(report)
    if json_path:
        Path(json_path).write_text(json.dumps({"options": asdict(opts), **report.as_dict()}, indent=2))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
