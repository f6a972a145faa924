"""Who may send which command: the one place authorisation is decided.

With transport security on, the shell learns each connection's key from the CURVE handshake
(the ZAP authenticator names it) and hands the core a ``Principal`` with every message; the
core asks ``refusal`` before any handler runs. With security off there is no principal and
every command is allowed, as before.

Roles: ``client`` (enqueue, wait, read), ``admin`` (everything a client may, plus the commands
that change other people's jobs: requeue, cancel), ``worker`` (the worker commands, and HELLO
only for the groups its key is listed for).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal import protocol as P

CLIENT = "client"
ADMIN = "admin"
WORKER = "worker"

# command -> the role that may send it (an admin may send every client command too)
ROLE_OF: dict[bytes, str] = {
    **{command: CLIENT for command in P.CLIENT_COMMANDS},
    P.REQUEUE: ADMIN,
    P.CANCEL: ADMIN,
    **{command: WORKER for command in P.WORKER_COMMANDS},
}


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


def refusal(principal: Principal | None, command: bytes, body: dict[str, Any]) -> str | None:
    """Why ``principal`` may not send ``command`` with ``body``, or None when it may."""
    if principal is None:
        return None  # transport security is off: the bind is loopback or ipc, or the operator said --insecure
    role = ROLE_OF.get(command)
    if role is None:
        return None  # not a command at all: the handler lookup refuses it as a protocol error
    if not principal.may(role):
        held = ", ".join(sorted(principal.roles)) or "no role"
        return f"key {principal.name!r} ({held}) may not send {command.decode()}: it needs a {role} key"
    if command == P.HELLO:
        group = body.get("group")
        if group not in principal.groups:
            allowed = ", ".join(sorted(principal.groups)) or "none"
            return f"key {principal.name!r} may not serve group {group!r} (its groups: {allowed})"
    return None
