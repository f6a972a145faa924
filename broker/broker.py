"""The complete broker: core rules plus the client and worker command handlers."""
from __future__ import annotations

from .control_commands import ControlCommands
from .step_commands import StepCommands
from .worker_commands import WorkerCommands


class Broker(ControlCommands, StepCommands, WorkerCommands):
    """All broker state and decisions; see core.BrokerCore for the shape."""

    def load(self) -> None:
        """Rebuild memory from storage, including which parents wait for which children."""
        super().load()
        self.rebuild_fanin()
