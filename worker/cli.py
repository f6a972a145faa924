"""`worker`: parse flags, load the group's workflows, run."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from shoal.endpoints import check_endpoint
from shoal.errors import ConfigError
from shoal.logs import add_log_options, setup_logging

from .embed import build_worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description="Run a Shoal worker for one group.")
    parser.add_argument("--group", default=None, help="worker group (default: 'default')")
    parser.add_argument("--app", help="module(s) with the workflows, comma-separated (default: the group's `app`)")
    parser.add_argument("--connect", help="broker endpoint (default SHOAL_BROKER or the config's bind)")
    parser.add_argument("--concurrency", type=int, help="parallel runs (default: the group's `concurrency`)")
    parser.add_argument("--config", help="path to shoal.toml")
    parser.add_argument("--server", help="server name for [servers.NAME] blocks")
    parser.add_argument("--key", metavar="FILE",
                        help="this worker's secret CURVE key, NAME.key_secret (default SHOAL_KEY or [security] key)")
    parser.add_argument("--broker-key", dest="broker_public_key", metavar="FILE",
                        help="the broker's public CURVE key (default SHOAL_BROKER_KEY or [security] broker_public_key)")
    add_log_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `worker` command."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if args.concurrency is not None and args.concurrency < 1:
        print("worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    _import_from_cwd()
    try:
        endpoint = args.connect or os.environ.get("SHOAL_BROKER")
        if endpoint:  # a malformed one would only fail inside zmq's connect, as a traceback
            check_endpoint(endpoint)
        shell = build_worker(group=args.group, app=args.app, endpoint=args.connect,
                             concurrency=args.concurrency, config=args.config, server=args.server,
                             env=os.environ, key=args.key, broker_key=args.broker_public_key)
    except ConfigError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2

    signals = 0

    _apply_nice(shell.options.nice)

    def on_signal(signum: int, frame: object) -> None:
        # Runs between bytecodes of the main thread, maybe while it holds a lock: take none here.
        # The first SIGTERM or Ctrl-C drains; a second one of either leaves now (the broker
        # redelivers what was in flight), as `kill` twice or Ctrl-C twice is meant to.
        nonlocal signals
        signals += 1
        if signals > 1:
            os._exit(1)
        shell.drain_from_signal()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = shell.run()
    if shell.refused:
        print(f"worker: the broker refused this worker: {shell.refused}", file=sys.stderr)
    # Handlers still running after the grace time were handed back to the broker; their
    # threads cannot be stopped, and interpreter exit would wait for them: leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _import_from_cwd() -> None:
    """``worker --app myapp`` finds ``myapp.py`` in the current directory, as ``python -m`` (and so
    the workers a broker starts) and Celery, RQ and Dramatiq do; a console script's sys.path
    does not hold it."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _apply_nice(nice: int) -> None:
    """Take the group's ``nice`` when started by hand (the supervisor already set it, and put its
    workers in their own session with the autogroup niced too; a terminal's session is the
    user's, so here only the process's own niceness changes)."""
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)


if __name__ == "__main__":
    sys.exit(main())
