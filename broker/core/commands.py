"""The one command table: command -> message type -> handler, and the role allowed to send it.

``Broker.handle`` looks a command up here, asks ``refusal`` whether the sender's key may send
it, turns the body into its typed message (every field checked before any state is touched)
and calls the handler with the core's parts. With transport security on, the shell learns each
connection's key from the CURVE handshake and hands the core a ``Principal`` with every
message; with security off there is no principal and every command is allowed.

Roles: ``client`` (enqueue, wait, read), ``admin`` (everything a client may, plus the commands
that change other people's jobs: requeue, cancel), ``worker`` (the worker commands, and HELLO
only for the groups its key is listed for).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

from shoal import messages as M
from shoal import protocol as P

from .handlers import client, control, cron, enqueue, history, reads, step, worker
from .state import Core

CLIENT = "client"
ADMIN = "admin"
WORKER = "worker"


class Command(NamedTuple):
    """One row of the table."""

    parse: Callable[[Mapping[str, Any]], Any]   # body -> typed message (raises ProtocolError)
    handler: Callable[[Core, bytes, Any], None]  # (core, sender, message)
    role: str


def _body(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """Commands whose body carries nothing the handler reads (HEARTBEAT, BYE)."""
    return body


COMMANDS: dict[bytes, Command] = {
    P.ENQUEUE: Command(M.Enqueue.from_body, enqueue.on_enqueue, CLIENT),
    P.GET: Command(M.Get.from_body, client.on_get, CLIENT),
    P.WAIT: Command(M.Wait.from_body, client.on_wait, CLIENT),
    P.STATS: Command(M.Stats.from_body, reads.on_stats, CLIENT),
    P.DEAD: Command(M.Dead.from_body, client.on_dead, CLIENT),
    P.JOBS: Command(M.Jobs.from_body, client.on_jobs, CLIENT),
    P.STEPS: Command(M.Steps.from_body, step.on_steps, CLIENT),
    P.HISTORY: Command(M.History.from_body, history.on_history, CLIENT),
    P.CRON: Command(M.Cron.from_body, cron.on_cron, CLIENT),
    P.STORAGE: Command(M.Storage.from_body, reads.on_storage, CLIENT),
    P.WORKERS: Command(M.Workers.from_body, reads.on_workers, CLIENT),
    P.REQUEUE: Command(M.Requeue.from_body, client.on_requeue, ADMIN),
    P.CANCEL: Command(M.Cancel.from_body, control.on_cancel, ADMIN),
    P.HELLO: Command(M.Hello.from_body, worker.on_hello, WORKER),
    P.READY: Command(M.Ready.from_body, worker.on_ready, WORKER),
    P.DONE: Command(M.Done.from_body, worker.on_done, WORKER),
    P.FAIL: Command(M.Fail.from_body, worker.on_fail, WORKER),
    P.RETURN: Command(M.Return.from_body, worker.on_return, WORKER),
    P.HEARTBEAT: Command(_body, worker.on_heartbeat, WORKER),
    P.BYE: Command(_body, worker.on_bye, WORKER),
    P.STEP: Command(M.Step.from_body, step.on_step, WORKER),
    P.SUSPEND: Command(M.Suspend.from_body, step.on_suspend, WORKER),
}

# command -> the role that may send it (an admin may send every client command too)
ROLE_OF: dict[bytes, str] = {command: row.role for command, row in COMMANDS.items()}


@dataclass(frozen=True)
class Principal:
    """The authenticated key behind a connection: its name (for log lines) and what it may do."""

    name: str
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = field(default_factory=frozenset)  # worker groups it may say HELLO for

    def may(self, role: str) -> bool:
        if role == CLIENT:
            return CLIENT in self.roles or ADMIN in self.roles
        return role in self.roles


def refusal(principal: Principal | None, command: bytes, body: Mapping[str, Any]) -> str | None:
    """Why ``principal`` may not send ``command`` with ``body``, or None when it may."""
    if principal is None:
        return None  # transport security is off: the bind is loopback or ipc, or the operator said --insecure
    role = ROLE_OF.get(command)
    if role is None:
        return None  # not a command at all: the handler lookup refuses it as a protocol error
    if not principal.may(role):
        held = ", ".join(sorted(principal.roles)) or "no role"
        return f"key {principal.name!r} ({held}) may not send {command.decode()}: it needs {'an' if role == ADMIN else 'a'} {role} key"
    if command == P.HELLO:
        group = body.get("group")
        if group not in principal.groups:
            allowed = ", ".join(sorted(principal.groups)) or "none"
            return f"key {principal.name!r} may not serve group {group!r} (its groups: {allowed})"
    return None
