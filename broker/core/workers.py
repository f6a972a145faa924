"""The broker's view of connected workers: group, advertised slots, leases, liveness."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator


@dataclass
class WorkerInfo:
    """One connected worker process."""

    identity: bytes
    group: str
    name: str                      # host:pid, for people and logs
    slots: int                     # free slots the worker advertised (credit)
    lease_s: float                 # silent this long: declared dead
    last_seen: float               # monotonic
    workflows: tuple[str, ...] = ()
    pid: int = 0
    host: str = ""
    server: str = ""
    leases: dict[bytes, int] = field(default_factory=dict)  # job id -> token

    @property
    def credit(self) -> int:
        """How many more jobs it may be sent now."""
        return self.slots - len(self.leases)


class WorkerRegistry:
    """Workers by identity and by group, in the order they joined (round-robin)."""

    def __init__(self) -> None:
        self.by_identity: dict[bytes, WorkerInfo] = {}
        self.by_group: dict[str, list[WorkerInfo]] = {}

    def add(self, worker: WorkerInfo) -> None:
        """Register a worker (replacing one with the same identity)."""
        self.remove(worker.identity)
        self.by_identity[worker.identity] = worker
        self.by_group.setdefault(worker.group, []).append(worker)

    def remove(self, identity: bytes) -> WorkerInfo | None:
        """Forget a worker; returns it so its leases can be released."""
        worker = self.by_identity.pop(identity, None)
        if worker is not None:
            members = self.by_group.get(worker.group, [])
            if worker in members:
                members.remove(worker)
        return worker

    def place_of(self, worker: WorkerInfo) -> int:
        """Where the worker stands in its group's rotation (-1: not there), for ``put_back``."""
        members = self.by_group.get(worker.group, [])
        return members.index(worker) if worker in members else -1

    def put_back(self, worker: WorkerInfo, place: int) -> None:
        """Undo a ``remove``: the worker again, at its old place in the rotation."""
        self.by_identity[worker.identity] = worker
        members = self.by_group.setdefault(worker.group, [])
        if worker not in members:
            members.insert(place if place >= 0 else len(members), worker)

    def get(self, identity: bytes) -> WorkerInfo | None:
        """The worker with this identity, if connected."""
        return self.by_identity.get(identity)

    def in_group(self, group: str) -> list[WorkerInfo]:
        """Connected workers of ``group``."""
        return self.by_group.get(group, [])

    def rotation(self, group: str) -> list[WorkerInfo]:
        """The group's workers, starting one further each call, so dispatch spreads work evenly."""
        members = self.by_group.get(group, [])
        if len(members) < 2:
            return members
        members.append(members.pop(0))
        return members

    def silent_since(self, cutoff_for: Callable[[WorkerInfo], float]) -> list[WorkerInfo]:
        """Workers whose last message is older than their own lease."""
        return [w for w in self.by_identity.values() if w.last_seen < cutoff_for(w)]

    def __iter__(self) -> Iterator[WorkerInfo]:
        return iter(list(self.by_identity.values()))
