"""Factory fixtures that start real broker and worker processes on loopback.

Every process writes its output to a file under the test's tmp_path; the fixtures
kill whatever is still running when the test ends.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from shoal import Client

APPS = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS))  # the test app is importable here too (enqueue by workflow object)
DEFAULT_TOML = """
[broker]
heartbeat_interval = "0.2s"

[workflows]
backoff = "20ms"
backoff_max = "200ms"
lease = "3s"
grace = "5s"
"""


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Proc:
    """A broker or worker subprocess with its log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.args, self.log_path = args, log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)

    def wait(self, timeout: float = 20.0) -> int:
        return self.popen.wait(timeout)

    def close(self) -> None:
        self.kill()
        self._fh.close()


class Cluster:
    """A broker (restartable on the same port and data) plus any number of workers."""

    def __init__(self, tmp: Path, toml: str = DEFAULT_TOML) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.config = tmp / "shoal.toml"
        self.config.write_text(toml)
        self.endpoint = ""
        self.broker: Proc | None = None
        self.workers: list[Proc] = []
        self.procs: list[Proc] = []
        self.clients: list[Client] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(APPS), self.env.get("PYTHONPATH", "")])
        self.env["SHOAL_TEST_DIR"] = str(tmp)
        self.env.pop("SHOAL_BROKER", None)
        self.env.pop("SHOAL_CONFIG", None)
        self._n = 0

    def _log(self, name: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:02d}-{name}.log"

    def start_broker(self, *extra: str, env: dict[str, str] | None = None, supervise: bool = False) -> Proc:
        """Start (or restart on the same endpoint) the broker and wait until it listens."""
        bind = self.endpoint or "tcp://127.0.0.1:*"
        args = [sys.executable, "-m", "shoal.broker", "--config", str(self.config), "--data", str(self.data),
                "--bind", bind, *([] if supervise else ["--no-supervise"]), *extra]
        proc = Proc(args, self._log("broker"), {**self.env, **(env or {})}, self.tmp)
        self.procs.append(proc)
        self.broker = proc
        line = wait_for(lambda: re.search(r"listening on (\S+)", proc.output()) or (not proc.alive() and
                        pytest.fail(f"broker exited:\n{proc.output()}")), what="the broker to listen")
        self.endpoint = line.group(1)
        return proc

    def start_worker(self, group: str = "email", concurrency: int = 4, *extra: str, app: str = "testapp",
                     wait: bool = True) -> Proc:
        """Start a worker of ``group`` and (by default) wait until the broker counts it."""
        args = [sys.executable, "-m", "shoal.worker", "--group", group, "--app", app, "--connect", self.endpoint,
                "--concurrency", str(concurrency), "--config", str(self.config), *extra]
        proc = Proc(args, self._log(f"worker-{group}"), self.env, self.tmp)
        self.procs.append(proc)
        self.workers.append(proc)
        if wait:
            joined = f":{proc.pid} joined group {group}"
            wait_for(lambda: joined in self.broker_output() or (not proc.alive() and
                     pytest.fail(f"worker exited:\n{proc.output()}")), what=f"a {group} worker to join")
        return proc

    def start_worker_raw(self, group: str, *extra: str, app: str = "testapp") -> Proc:
        """A worker with no --concurrency flag (it takes its settings from the config)."""
        args = [sys.executable, "-m", "shoal.worker", "--group", group, "--app", app, "--connect", self.endpoint,
                "--config", str(self.config), *extra]
        proc = Proc(args, self._log(f"worker-{group}"), self.env, self.tmp)
        self.procs.append(proc)
        self.workers.append(proc)
        return proc

    def broker_output(self) -> str:
        """Everything the brokers of this cluster logged (restarts included)."""
        return "".join(p.output() for p in self.procs if "shoal.broker" in p.args)

    def client(self, timeout: float = 10.0) -> Client:
        c = Client(self.endpoint, timeout=timeout)
        self.clients.append(c)
        return c

    def workers_in(self, group: str) -> int:
        c = self.clients[0] if self.clients else self.client()
        return c.stats().get(group, {}).get("workers", 0)

    def replay(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``python -m shoal.broker replay --data DATA ARGS``, run to its end."""
        return subprocess.run([sys.executable, "-m", "shoal.broker", "replay", "--data", str(self.data), *args],
                              capture_output=True, text=True, timeout=120, env=self.env)

    def stop_and_verify(self) -> subprocess.CompletedProcess[str]:
        """Stop the broker (SIGTERM) and check that its data is exactly what its log rebuilds."""
        assert self.broker is not None
        self.broker.signal(signal.SIGTERM)
        self.broker.wait(30)
        verified = self.replay("--verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        return verified

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for proc in self.procs:
            proc.close()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Make clusters (usually one) that are torn down after the test."""
    made: list[Cluster] = []

    def make(toml: str = DEFAULT_TOML) -> Cluster:
        c = Cluster(tmp_path, toml)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running broker with no workers yet."""
    c = cluster_factory()
    c.start_broker()
    return c


def lines(path: Path) -> list[str]:
    """Lines of a side-effect file (empty when it does not exist yet)."""
    return path.read_text().splitlines() if path.exists() else []


def kill_tree(proc: Proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)
