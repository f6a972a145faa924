"""The complete broker: core rules plus the client and worker command handlers."""
from __future__ import annotations

from typing import Any

from .control_commands import ControlCommands
from .cron_commands import CronCommands
from .history_commands import HistoryCommands
from .step_commands import StepCommands
from .worker_commands import WorkerCommands


class Broker(HistoryCommands, CronCommands, ControlCommands, StepCommands, WorkerCommands):
    """All broker state and decisions; see core.BrokerCore for the shape."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.init_cron()  # before load(): a tick() on a broker that was never loaded works too

    def load(self) -> None:
        """Rebuild memory from storage: fan-in waits and cron marks too."""
        super().load()
        self.rebuild_fanin()
        self.load_cron()

    def tick(self) -> None:
        """Cron ticks that are due first, so their jobs dispatch in this same pass; then the core's timers."""
        self.cron_pass(self.clock.wall_ms())
        super().tick()

    def next_wakeup_s(self) -> float:
        """The core's wake-up, or the next cron tick if sooner."""
        wait = super().next_wakeup_s()
        cron = self.cron_wait_s(self.clock.wall_ms())
        return wait if cron is None else min(wait, cron)
