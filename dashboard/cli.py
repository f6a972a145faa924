"""``shoal dashboard [--bind 127.0.0.1:8008] [--broker ENDPOINT]``: serve the dashboard until Ctrl-C."""
from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

DEFAULT_BIND = "127.0.0.1:8008"
EXIT_OK, EXIT_USAGE = 0, 2


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as (host, port); raise ``ValueError`` with a sentence."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid --bind {text!r}: expected HOST:PORT, for example {DEFAULT_BIND}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only."""
    from shoal.security import is_loopback_host

    return is_loopback_host(host)


def build_parser() -> argparse.ArgumentParser:
    """The ``shoal dashboard`` flags."""
    parser = argparse.ArgumentParser(prog="shoal dashboard", description="Serve a live web dashboard of a broker.")
    parser.add_argument("--bind", default=DEFAULT_BIND, metavar="HOST:PORT",
                        help=f"where to serve (default {DEFAULT_BIND}: this machine only; port 0 picks a free one)")
    parser.add_argument("--broker", metavar="ENDPOINT",
                        help="broker endpoint (default: SHOAL_BROKER, else [broker] bind from the config, "
                             "else tcp://127.0.0.1:5555)")
    parser.add_argument("--config", metavar="FILE", help="config file (default: SHOAL_CONFIG, else ./shoal.toml)")
    parser.add_argument("--key", metavar="FILE",
                        help="the dashboard's secret CURVE key: an admin key may requeue and cancel, a client key "
                             "only reads (default SHOAL_KEY, else [security] key)")
    parser.add_argument("--broker-key", dest="broker_public_key", metavar="FILE",
                        help="the broker's public CURVE key (default SHOAL_BROKER_KEY, else [security] "
                             "broker_public_key)")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help="seconds to wait for the broker to answer a page's request (default 3)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="how much the dashboard logs (default info)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, bind, and serve; returns the exit code (2 for a usage or config error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        missing = (exc.name or "a package").split(".")[0]
        print(f"shoal dashboard: {missing} is missing; install with pip install 'shoal[dashboard]'", file=sys.stderr)
        return EXIT_USAGE
    from shoal.endpoints import resolve_endpoint
    from shoal.errors import ConfigError
    from shoal.security import client_keys, key_paths

    try:
        host, port = parse_bind(args.bind)
        endpoint = resolve_endpoint(args.broker, args.config)
        key, broker_key, sources = key_paths(args.key, args.broker_public_key, args.config)
        client_keys(key, broker_key, sources)  # a key that cannot be read is reported here, not per page
    except (ValueError, ConfigError) as exc:
        print(f"shoal dashboard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        print(f"shoal dashboard: cannot listen on {args.bind}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    loopback = is_loopback(host)
    url_host = f"[{host}]" if ":" in host else host
    print(f"shoal dashboard: serving http://{url_host}:{sock.getsockname()[1]}/ for the broker at {endpoint}",
          flush=True)
    if not loopback:
        print("shoal dashboard: WARNING: not bound to loopback; anyone who reaches this address can do what "
              "its key may (requeue and cancel with an admin key)", file=sys.stderr, flush=True)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(endpoint, timeout_s=args.timeout, loopback_only=loopback, key=key or None,
                     broker_key=broker_key or None, config=args.config)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug",
                            timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK
