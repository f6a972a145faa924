"""Private Redis, RabbitMQ and PostgreSQL servers for the peers benchmark.

Each server is started by this module on 127.0.0.1 on a free port, with its own data
directory under the benchmark's temp dir, and stopped by its pid (its process group for
the RabbitMQ shell wrapper) when the run ends, fails or is interrupted. The Debian
packages' own services are never used (``setup.sh`` keeps them stopped).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

LOOPBACK = "127.0.0.1"


def free_port(avoid: tuple[int, ...] = ()) -> int:
    """A TCP port free on loopback right now (the server binds it a moment later), none of
    ``avoid``: a port just picked and let go is free again, and the kernel may pick it twice."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def package_version(name: str) -> str:
    """The installed Debian package's version, or 'not installed'."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "not installed"


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
          user: str | None = None) -> "subprocess.Popen[bytes]":
    """Start a process writing to ``log``, in its own session: it is stopped whole, by its id."""
    with open(log, "ab") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, user=user,
                                start_new_session=True)


def stop_group(proc: "subprocess.Popen[bytes]", timeout_s: float = 20.0) -> None:
    """SIGTERM the process group ``proc`` leads; SIGKILL it if it is still there after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def log_tail(path: Path, lines: int = 8) -> str:
    """The last lines of a log, on one line: what a failure message ends with."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServerError(RuntimeError):
    """A server could not be started; the message says why (and ends with its log)."""


class Server:
    """One server process: started in its own session, stopped by pid (or its process group)."""

    name = "server"

    def __init__(self, root: Path) -> None:
        self.dir = root / f"{self.name}-{os.getpid()}-{free_port()}"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.log = self.dir / "server.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []  # helpers started for it (epmd)

    def _spawn(self, args: list[str], env: dict[str, str] | None = None, user: str | None = None,
               log: Path | None = None) -> "subprocess.Popen[bytes]":
        return spawn(args, log or self.log, env=env, cwd=self.dir, user=user)

    def _wait_ready(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.popen.returncode}: {self.tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerError(f"{self.name} not ready after {timeout_s:.0f}s: {self.tail()}")

    def tail(self) -> str:
        return log_tail(self.log)

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL what is left after 20 s; then its helpers."""
        for proc in [p for p in [self.popen, *self.extra] if p is not None]:
            stop_group(proc)
        self.popen = None
        self.extra = []

    def url(self) -> str:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


def _ping_redis(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


class Redis(Server):
    """redis-server as shipped (``durable``: ``--appendonly yes --appendfsync always``)."""

    def __init__(self, root: Path, durable: bool) -> None:
        self.name = "redis-aof" if durable else "redis"
        super().__init__(root)
        self.durable = durable

    def start(self) -> "Redis":
        args = ["redis-server", "--bind", LOOPBACK, "--port", str(self.port), "--dir", str(self.dir),
                "--protected-mode", "yes", "--daemonize", "no", "--logfile", ""]
        if self.durable:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        if shutil.which("redis-server") is None:
            raise ServerError("redis-server not installed (run scripts/peers/setup.sh)")
        self.popen = self._spawn(args)
        self._wait_ready(lambda: _ping_redis(self.port), 20)
        return self

    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        v = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())
        return f"redis {v}" + (" (appendonly yes, appendfsync always)" if self.durable else " (defaults)")


RABBITMQ_BIN = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the real script: the wrapper would su and cd


class RabbitMQ(Server):
    """rabbitmq-server with its node name, ports, directories and cookie all under its temp dir."""

    name = "rabbitmq"

    def start(self) -> "RabbitMQ":
        if not os.path.exists(RABBITMQ_BIN) or shutil.which("epmd") is None:
            raise ServerError("rabbitmq-server not installed (run scripts/peers/setup.sh)")
        # three ports for one node, picked one at a time: each is kept apart from those picked
        # before it (a start once failed with eaddrinuse on the AMQP port; whether epmd or the
        # node's own listener had it, or another connection, the log does not say)
        epmd_port = free_port(avoid=(self.port,))
        dist_port = free_port(avoid=(self.port, epmd_port))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C.UTF-8",
               "ERL_EPMD_PORT": str(epmd_port), "ERL_EPMD_ADDRESS": LOOPBACK}
        # our own epmd in the foreground, on loopback: a daemonized one would outlive the run
        self.extra.append(self._spawn(["epmd", "-port", str(epmd_port), "-address", LOOPBACK], env=env,
                                      log=self.dir / "epmd.log"))
        conf = self.dir / "rabbitmq.conf"
        conf.write_text(f"listeners.tcp.default = {LOOPBACK}:{self.port}\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        # names from the hosts file only: the node never asks a DNS server anything
        (self.dir / "inetrc").write_text('{lookup, [file]}.\n{host, {127,0,0,1}, ["localhost"]}.\n')
        env["ERL_INETRC"] = str(self.dir / "inetrc")
        env.update({
            "RABBITMQ_NODENAME": f"peers{self.port}@localhost", "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(conf.with_suffix("")),  # the server adds .conf
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"), "RABBITMQ_LOGS": "-",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        self.popen = self._spawn([RABBITMQ_BIN], env=env)
        self._wait_ready(self._amqp_ready, 90)
        return self

    def _amqp_ready(self) -> bool:
        import pika  # only the peers venv has it

        try:
            pika.BlockingConnection(pika.URLParameters(self.url() + "?connection_attempts=1&socket_timeout=2")).close()
            return True
        except pika.exceptions.AMQPError:
            return False

    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/%2F"

    def version(self) -> str:
        return f"rabbitmq-server {package_version('rabbitmq-server')}, erlang {package_version('erlang-base')}"


def postgres_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise ServerError("postgresql not installed (run scripts/peers/setup.sh)")
    return found[-1]


class Postgres(Server):
    """A fresh cluster (initdb, trust on loopback only) run by postgres directly; fsync on, as shipped."""

    name = "postgres"
    database = "peers"

    def start(self) -> "Postgres":
        user = None
        if os.geteuid() == 0:  # initdb refuses root: the package's system user owns the cluster
            user = "postgres"
            pw = pwd.getpwnam(user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir.parent, 0o711)  # mkdtemp makes it 0700: postgres must pass through it
        data = self.dir / "data"
        init = subprocess.run([postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                               "--no-instructions"], capture_output=True, text=True, user=user, cwd=self.dir)
        if init.returncode != 0:
            raise ServerError(f"initdb failed: {init.stderr.strip()[-400:]}")
        self.popen = self._spawn([postgres_bin("postgres"), "-D", str(data), "-p", str(self.port),
                                  "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={self.dir}",
                                  "-c", "fsync=on", "-c", "synchronous_commit=on"], user=user)
        self._wait_ready(self._ready, 60)
        return self

    def _ready(self) -> bool:
        import psycopg  # only the peers venv has it

        try:
            with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=2) as conn:
                if not conn.execute("select 1 from pg_database where datname = %s", (self.database,)).fetchone():
                    conn.execute(f"create database {self.database}")
            return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str | None = None) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database or self.database}"

    def version(self) -> str:
        out = subprocess.run([postgres_bin("postgres"), "--version"], capture_output=True, text=True).stdout.strip()
        return f"{out} (fsync on, synchronous_commit on)"
