"""Which broker endpoint to connect to, and whether it is one: shared by ``Client``, ``shoal`` and ``worker``.

Resolution, first found wins: the argument or flag, ``SHOAL_BROKER``, the config's ``[broker]
bind`` (``--config``, ``SHOAL_CONFIG`` or ``./shoal.toml``; a wildcard bind is reached on
loopback), then ``tcp://127.0.0.1:5555``. An endpoint without a transport
(``localhost:5599``) is refused at once with ``InvalidEndpoint``: ZeroMQ would only
report ``Invalid argument`` from inside ``connect``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

from shoal.errors import InvalidEndpoint

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
_TCP = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]*]+):(\d{1,5})$")
_WILDCARDS = ("tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:")


def check_endpoint(endpoint: object) -> str:
    """``endpoint`` if a client can connect to it (``tcp://HOST:PORT`` or ``ipc://PATH``), else ``InvalidEndpoint``."""
    if isinstance(endpoint, str):
        tcp = _TCP.match(endpoint)
        if tcp is not None and 0 < int(tcp.group(2)) < 65536:
            return endpoint
        if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://") and not endpoint.isspace():
            return endpoint
    raise InvalidEndpoint(f"invalid endpoint {endpoint!r}, expected tcp://HOST:PORT or ipc://PATH")


def resolve_endpoint(flag: str | None, config: str | None, env: Mapping[str, str] | None = None) -> str:
    """The endpoint to connect to: ``flag``, else SHOAL_BROKER, else the config's bind, else the default.

    The config is read only when it decides the endpoint or was named with ``config``
    (a file named on purpose that is broken should be reported, not skipped). The
    result is checked: a malformed endpoint raises ``InvalidEndpoint``.
    """
    environ = os.environ if env is None else env
    endpoint = flag or environ.get("SHOAL_BROKER")
    if endpoint:
        check_endpoint(endpoint)  # before the config, which would name SHOAL_BROKER a bad *bind*
        if config is None:
            return endpoint
    from shoal.conf import load_settings

    settings = load_settings(config, env=environ)
    return check_endpoint(endpoint or connectable(settings.broker.bind or DEFAULT_ENDPOINT))


def connectable(bind: str) -> str:
    """A bind endpoint as a client can connect to it: a wildcard host means this machine."""
    for wildcard in _WILDCARDS:
        if bind.startswith(wildcard):
            return "tcp://127.0.0.1:" + bind[len(wildcard):]
    return bind
