"""What a conformance scenario runs on: a real broker (LMDB under a temp dir, loopback TCP),
workers started from a given command line, a client, and a marks file the workflows write to.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from shoal import Client
from tests.conftest import Proc as Process
from tests.conftest import wait_for

from . import ROOT

GROUP = "conf"
TOML = """
[broker]
heartbeat_interval = "{heartbeat}s"
{broker_extra}

[workflows]
backoff = "20ms"
backoff_max = "200ms"
lease = "{lease}s"
grace = "{grace}s"

{workflows_extra}
"""


SECURITY = """
[security]
broker_secret_key = "{broker_secret}"
clients = "{clients}"
admins = "{clients}"

[security.workers]
conf = "{workers}"
"""


def make_keys(root: Path) -> dict[str, str]:
    """`shoal keygen` keys for a CURVE run: the broker's, a client's (client and admin: scenarios
    cancel) and a worker key for group conf, each public one in its allow-list directory."""
    from shoal.security import keygen

    paths = {"broker_secret": str(keygen("broker", root / "secrets")[1]), "broker": str(root / "secrets" / "broker.key")}
    for name, role in (("client", "clients"), ("worker", "workers")):
        public, secret = keygen(name, root / "secrets")
        (root / role).mkdir(parents=True)
        (root / role / public.name).write_bytes(public.read_bytes())
        paths[name], paths[role] = str(secret), str(root / role)
    return paths


class ScenarioFailed(AssertionError):
    """A scenario's expectation did not hold; the message says which, with the logs' tails."""


class Harness:
    """One scenario's broker, workers, client and marks file, under ``tmp``."""

    def __init__(self, tmp: Path, worker_cmd: list[str], *, grace_s: float = 3.0, lease_s: float = 4.0,
                 heartbeat_s: float = 0.2, workflows_extra: str = "", curve: bool = False) -> None:
        self.tmp = tmp
        # curve: the broker has CURVE on; workers get their key in SHOAL_KEY / SHOAL_BROKER_KEY
        self.keys = make_keys(tmp / "keys") if curve else None
        self.worker_cmd = worker_cmd
        self.config = tmp / "shoal.toml"
        # workflows_extra: more tables after [workflows] (a group's own settings)
        self._settings = {"heartbeat": heartbeat_s, "lease": lease_s, "grace": grace_s, "workflows_extra": workflows_extra}
        self.write_config()
        self.marks = tmp / "marks"
        self.marks.touch()
        self.endpoint = ""
        self.broker: Process | None = None
        self.procs: list[Process] = []
        self._client: Client | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
        # What every implementation is given (docs/protocol.md, "Conformance"): flags, and these.
        env.update({"SHOAL_CONFIG": str(self.config), "SHOAL_GROUP": GROUP,
                    "SHOAL_HEARTBEAT_INTERVAL": str(heartbeat_s), "SHOAL_GRACE": str(grace_s)})
        self.env = env
        self.worker_env = {} if self.keys is None else {"SHOAL_KEY": self.keys["worker"], "SHOAL_BROKER_KEY": self.keys["broker"]}
        self._n = 0

    def write_config(self, broker_extra: str = "") -> None:
        """(Re)write shoal.toml; ``broker_extra`` adds lines to its [broker] table (read at the next start)."""
        text = TOML.format(broker_extra=broker_extra, **self._settings)
        if self.keys is not None:
            text += SECURITY.format(**self.keys)
        self.config.write_text(text)

    def _log(self, name: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:02d}-{name}.log"

    # --- processes -------------------------------------------------------------------
    def start_broker(self) -> Process:
        """Start (or restart on the same endpoint and data) the broker; wait until it listens."""
        args = [sys.executable, "-m", "shoal.broker", "--config", str(self.config), "--data", str(self.tmp / "data"),
                "--bind", self.endpoint or "tcp://127.0.0.1:*", "--no-supervise"]
        proc = Process(args, self._log("broker"), self.env, self.tmp)
        self.procs.append(proc)
        self.broker = proc
        found = wait_for(lambda: re.search(r"listening on (\S+)", proc.output()) or not proc.alive(), 30,
                         "the broker to listen")
        if not proc.alive():
            raise ScenarioFailed(f"the broker exited:\n{proc.output()[-3000:]}")
        self.endpoint = found.group(1)
        return proc

    def start_worker(self, concurrency: int = 2, wait: bool = True) -> Process:
        """Start the implementation under test; by default wait until the broker lists it."""
        args = [*self.worker_cmd, "--group", GROUP, "--connect", self.endpoint, "--concurrency", str(concurrency)]
        proc = Process(args, self._log("worker"), {**self.env, **self.worker_env, "SHOAL_BROKER": self.endpoint}, self.tmp)
        self.procs.append(proc)
        if wait:
            self.wait_joined(proc)
        return proc

    def wait_joined(self, proc: Process, timeout: float = 30) -> dict[str, Any]:
        """The broker's WORKERS entry for ``proc`` (matched by the pid its HELLO carries)."""
        def joined() -> dict[str, Any] | None:
            if not proc.alive():
                raise ScenarioFailed(f"the worker exited with {proc.popen.returncode}:\n{proc.output()[-3000:]}")
            return next((w for w in self.client.workers(GROUP) if w.get("pid") == proc.pid), None)
        return wait_for(joined, timeout, f"worker pid {proc.pid} to join group {GROUP!r}")  # type: ignore[no-any-return]

    @property
    def client(self) -> Client:
        if self._client is None:
            curve = {} if self.keys is None else {"key": self.keys["client"], "broker_key": self.keys["broker"]}
            self._client = Client(self.endpoint, timeout=10, **curve)
        return self._client

    def restart_client(self) -> Client:
        """A fresh client (after a broker restart the old one's replies are gone with the old broker)."""
        if self._client is not None:
            self._client.close()
        self._client = None
        return self.client

    # --- observations ------------------------------------------------------------------
    def marked(self) -> list[str]:
        """The lines the workflows wrote so far."""
        return self.marks.read_text().splitlines()

    def wait_mark(self, line: str, timeout: float = 30) -> None:
        wait_for(lambda: line in self.marked(), timeout, f"the mark {line!r}")

    def payload(self, **fields: Any) -> dict[str, Any]:
        return {"marks": str(self.marks), **fields}

    def logs(self) -> str:
        """The tail of every process's log, for a failure message."""
        return "\n".join(f"--- {p.log_path.name} ({' '.join(p.args[:3])} ...)\n{p.output()[-2500:]}" for p in self.procs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for proc in self.procs:
            proc.close()


def check(condition: bool, message: str) -> None:
    """A scenario's assertion: works under ``python -O`` too, and says what was expected."""
    if not condition:
        raise ScenarioFailed(message)


def sigkill(proc: Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)
