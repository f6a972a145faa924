"""The complete broker: core rules plus the client and worker command handlers."""
from __future__ import annotations

from .client_commands import ClientCommands
from .worker_commands import WorkerCommands


class Broker(ClientCommands, WorkerCommands):
    """All broker state and decisions; see core.BrokerCore for the shape."""
