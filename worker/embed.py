"""Building a worker from settings, and running one inside an application's own process."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, MutableMapping

from shoal.conf.settings import DEFAULT_GROUP, Settings
from shoal.endpoints import DEFAULT_ENDPOINT, check_endpoint, connectable
from shoal.errors import ConfigError
from shoal.security import CurveKeys, client_keys, supervised_keys
from shoal.workflow import Workflow, by_group, import_workflows, select

from .runner import Runner
from .shell import WorkerOptions, WorkerShell

log = logging.getLogger("shoal.worker")


def build_worker(*, group: str | None = None, app: str | list[str] | None = None, endpoint: str | None = None,
                 concurrency: int | None = None, config: str | None = None, server: str | None = None,
                 env: Mapping[str, str] | None = None, key: str | None = None,
                 broker_key: str | None = None) -> WorkerShell:
    """A ready-to-run worker: settings from the config chain, flags/arguments on top.

    ``key``/``broker_key``: CURVE certificate paths (else SHOAL_KEY / SHOAL_BROKER_KEY, else
    ``[security]``); a worker started by the broker uses the key the broker gave it instead.
    """
    from shoal.conf import load_settings

    env = os.environ if env is None else env
    flags = {"server": server, "key": key, "broker_public_key": broker_key}
    settings = load_settings(config, server=server, env=env, flags=flags)
    curve = _curve_keys(settings, env)
    name = group or DEFAULT_GROUP
    gs = settings.group(name)
    modules = [app] if isinstance(app, str) else list(app or gs.app)
    modules = [m.strip() for item in modules for m in item.split(",") if m.strip()]
    if not modules:
        raise ConfigError(f"no app module for group {name!r}: pass --app MODULE or set `app` in shoal.toml")
    workflows = _workflows_for(modules, name)
    options = WorkerOptions(
        endpoint=check_endpoint(endpoint or env.get("SHOAL_BROKER") or connectable(settings.broker.bind or DEFAULT_ENDPOINT)),
        group=name, concurrency=concurrency or gs.concurrency, server=settings.server,
        grace_s=gs.grace_s, heartbeat_interval_s=settings.broker.heartbeat_interval_s,
        max_jobs=gs.max_jobs, max_memory_mb=gs.max_memory_mb, max_step_bytes=settings.broker.max_step_bytes,
        nice=gs.nice, curve=curve,
    )
    runner = Runner(workflows, name, options.concurrency, max_step_bytes=options.max_step_bytes,
                    timeout_s=gs.timeout_s)
    return WorkerShell(options, runner)


def _curve_keys(settings: Settings, env: Mapping[str, str]) -> CurveKeys | None:
    """The supervisor's key for this group if it gave one, else the configured key (or none)."""
    given = supervised_keys(env) if isinstance(env, MutableMapping) else None
    security = settings.security
    return given or client_keys(security.key, security.broker_public_key, settings.security_sources)


def _workflows_for(modules: list[str], group: str) -> dict[str, Workflow]:
    """The group's workflows; says what the app holds per group, and refuses a group it lacks."""
    found = import_workflows(modules)
    groups = by_group(found)
    apps = ",".join(modules)
    if group not in groups:
        shown = "; ".join(f"{g}: {', '.join(names)}" for g, names in groups.items()) or "none"
        raise ConfigError(f"no workflow in --app {apps} is for group {group!r} (found {shown}); "
                          f"start the worker with --group set to one of those groups, or declare "
                          f"@workflow(..., worker={group!r})")
    for name, names in groups.items():
        log.info("%s group %r in %s: %s", "serving" if name == group else "found", name, apps, ", ".join(names))
    return select(found, group)


class WorkerHandle:
    """A worker running in a background thread of the application; ``stop`` drains it."""

    def __init__(self, shell: WorkerShell) -> None:
        self.shell = shell
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"shoal-worker-{shell.options.group}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.exit_code = self.shell.run()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain: finish in-flight jobs (handing back what is left after ``timeout``). True once stopped."""
        self.shell.drain(timeout)
        self._thread.join(None if timeout is None else timeout + 5.0)
        return not self._thread.is_alive()


def run_worker(*, group: str | None = None, app: str | list[str] | None = None, endpoint: str | None = None,
               concurrency: int | None = None, config: str | None = None, server: str | None = None,
               background: bool = False, key: str | None = None, broker_key: str | None = None) -> WorkerHandle | int:
    """Run a worker in this process.

    Blocking by default (returns the exit code when drained); with ``background=True``
    it runs in a daemon thread and returns a handle whose ``stop(timeout)`` drains it.
    """
    shell = build_worker(group=group, app=app, endpoint=endpoint, concurrency=concurrency,
                         config=config, server=server, key=key, broker_key=broker_key)
    if background:
        return WorkerHandle(shell)
    return shell.run()
