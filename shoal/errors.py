"""Every error Shoal raises, under one root, split by who is at fault."""
from __future__ import annotations


class ShoalError(Exception):
    """Root of every error Shoal raises."""


# --- the caller's fault -------------------------------------------------------
class PayloadError(ShoalError, ValueError):
    """A payload or result that msgpack cannot encode, or that is over the size limit."""


class UnknownWorkflow(ShoalError, LookupError):
    """A workflow name that no worker of the group has registered."""


class UnknownJob(ShoalError, LookupError):
    """A job id the broker has no record of (never sent, or expired)."""


class ConfigError(ShoalError, ValueError):
    """A config file, environment variable or flag that does not make sense."""


class InvalidEndpoint(ConfigError):
    """A broker endpoint that is not ``tcp://HOST:PORT`` or ``ipc://PATH`` (for example ``localhost:5599``)."""


class CannotListen(ShoalError):
    """The broker could not bind one of its endpoints (the port is taken, the address is not one of
    this host's); the message names the endpoint, what it is for and the reason."""


class TooManyWaits(ShoalError):
    """The broker refused a ``wait``: this connection has as many WAITs outstanding as it allows (limit in the message)."""


class Permanent(ShoalError):
    """Raised by a handler to fail its job now, skipping the remaining retries."""


# --- a peer's fault -----------------------------------------------------------
class ProtocolError(ShoalError):
    """A message that does not follow the wire protocol; carries what was received."""

    def __init__(self, reason: str, received: object = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.received = received


class RemoteError(ShoalError):
    """The broker refused a request and said why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- the system's fault -------------------------------------------------------
class BrokerUnreachable(ShoalError, TimeoutError):
    """The broker did not answer in time; the message names the endpoint.

    From ``enqueue``/``enqueue_many`` the outcome is unknown (the jobs may have been stored):
    ``job_ids`` holds their ids, and enqueueing again with ``id=``/``ids=`` set to them is safe.
    """

    def __init__(self, message: str, job_ids: "tuple[str, ...] | list[str]" = ()) -> None:
        super().__init__(message)
        self.job_ids: list[str] = list(job_ids)


class WaitTimeout(ShoalError, TimeoutError):
    """A job did not reach a final status within the wait timeout; ``job_id`` names it (it goes on)."""

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class StorageFull(ShoalError):
    """The broker's storage is full; the job was not accepted."""


class GroupUnhealthy(ShoalError):
    """The group's workers cannot start (they exit before taking a job); carries their exit and stderr."""


class GroupSaturated(ShoalError):
    """The group's backlog is at its ``max_pending``; try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Forbidden(RemoteError):
    """The broker refused the request: this connection's key may not send it (an admin command
    with a client key, a worker command with a client key, HELLO for a group the key is not listed for)."""

    def __init__(self, message: str) -> None:
        super().__init__("forbidden", message)
