"""What one group needs now, as the broker sees it: the supervisor scales on it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """Pending, running and connected capacity of one group."""

    pending: int
    running: int
    slots: int                 # advertised slots of connected workers
    connected_pids: frozenset[int]
