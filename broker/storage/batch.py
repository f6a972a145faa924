"""What one pass of the broker loop decided to write: committed by a store in one transaction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Record = Union[dict[str, Any], tuple[Any, ...]]


@dataclass
class Batch:
    """Writes decided during one pass of the broker loop, committed together."""

    # a job's record: a row (``Job.to_row``, what the core writes) or a dict (replay's); None deletes
    jobs: dict[bytes, Record | None] = field(default_factory=dict)
    log: list[tuple[str, bytes, Record]] = field(default_factory=list)  # an enqueue's changes: its row
    expiry_add: list[tuple[int, bytes]] = field(default_factory=list)
    expiry_del: list[tuple[int, bytes]] = field(default_factory=list)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    steps: dict[tuple[bytes, str], dict[str, Any]] = field(default_factory=dict)
    drop_steps: list[bytes] = field(default_factory=list)   # job ids whose steps go
    cron: dict[str, int] = field(default_factory=dict)      # cron entry -> last fired tick (ms)
    trim_log_to: int = 0   # drop log entries up to this seq (a snapshot holds the state there)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.log or self.expiry_add or self.expiry_del or self.routes or self.counters
                    or self.steps or self.drop_steps or self.cron or self.trim_log_to)
