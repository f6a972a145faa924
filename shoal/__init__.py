"""Shoal: a durable job queue and workflow runtime on ZeroMQ and LMDB.

    from shoal import Client, workflow, Permanent
"""
from .errors import (
    BrokerUnreachable, ConfigError, Forbidden, GroupSaturated, GroupUnhealthy, InvalidEndpoint, PayloadError, Permanent, ProtocolError,
    RemoteError, ShoalError, StorageFull, TooManyWaits, UnknownJob, UnknownWorkflow, WaitTimeout,
)
from .workflow import Workflow, workflow

__all__ = [
    "AsyncClient", "BrokerUnreachable", "Client", "ConfigError", "Forbidden", "GroupSaturated", "GroupUnhealthy", "InvalidEndpoint",
    "PayloadError", "Permanent", "ProtocolError", "RemoteError", "Result", "ShoalError", "StorageFull", "TooManyWaits",
    "UnknownJob", "UnknownWorkflow", "WaitTimeout",
    "Workflow", "run_worker", "workflow",
]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # Lazy: `import shoal` stays light (no zmq) until the client or worker is used.
    if name in ("Client", "AsyncClient", "Result"):
        from shoal import client

        return getattr(client, name)
    if name == "run_worker":
        from shoal.worker.embed import run_worker

        return run_worker
    raise AttributeError(name)
