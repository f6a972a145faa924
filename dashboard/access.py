"""What the dashboard's own key may do, so the pages can say it and disable what it may not.

With transport security on, the dashboard connects with a client or an admin key. Only an
admin key may requeue and cancel (broker/core/commands.py). The broker has no "who am I" command, so
the dashboard asks it the cheapest admin question there is, once: requeue a job id that cannot
exist (all zeros). An admin key gets "not requeued" (nothing changes); any other key gets a
``Forbidden`` whose message names the key and its roles as the broker sees them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from shoal.client import AsyncClient
from shoal.errors import BrokerUnreachable, Forbidden
from shoal.ids import id_to_str

PROBE_ID = id_to_str(bytes(16))  # no job has it: new_job_id() never makes an all-zero id
_FORBIDDEN = re.compile(r"key '(?P<name>[^']*)' \((?P<roles>[^)]*)\)")


@dataclass(frozen=True)
class Access:
    """The dashboard's key (empty: transport security is off) and whether it may requeue and cancel."""

    key_name: str = ""
    role: str = ""
    may_act: bool = True
    checked: bool = True

    @property
    def reason(self) -> str:
        """Why the action buttons are disabled (empty when they are not)."""
        if self.may_act:
            return ""
        if not self.checked:
            return f"checking what key {self.key_name!r} may do"
        return f"key {self.key_name!r} ({self.role}) may not requeue or cancel: that needs an admin key"

    @property
    def line(self) -> str:
        """The header line: "your key: ops, role admin — may requeue and cancel"."""
        if not self.key_name:
            return ""
        if not self.checked:
            return f"your key: {self.key_name} (checking its role)"
        may = "may requeue and cancel" if self.may_act else "read only: requeue and cancel need an admin key"
        return f"your key: {self.key_name}, role {self.role} — {may}"


def initial(key_path: str | None) -> Access:
    """Before the broker answered: with a key, actions wait for the probe."""
    if not key_path:
        return Access()
    name = Path(key_path).name.removesuffix(".key_secret")
    return Access(key_name=name, role="unknown", may_act=False, checked=False)


async def probe(client: AsyncClient, known: Access) -> Access:
    """Ask the broker what our key may do (see the module docstring); unchanged if it did not answer."""
    if known.checked:
        return known
    try:
        await client.requeue(PROBE_ID)
    except Forbidden as exc:
        found = _FORBIDDEN.search(str(exc))
        name, roles = (found["name"], found["roles"]) if found else (known.key_name, "client")
        return Access(key_name=name, role=roles, may_act=False, checked=True)
    except BrokerUnreachable:
        return known
    return Access(key_name=known.key_name, role="admin", may_act=True, checked=True)
