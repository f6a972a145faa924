"""`broker`: parse flags, build settings, run."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from shoal.errors import ConfigError, ShoalError
from shoal.logs import add_log_options, logging_json, setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="Run the Shoal broker.",
                                     epilog="broker replay --help: rebuild or verify a data directory from its log")
    parser.add_argument("--config", help="path to shoal.toml (default ./shoal.toml, or SHOAL_CONFIG)")
    parser.add_argument("--data", help="LMDB data directory (default ./.shoal, or SHOAL_DATA)")
    parser.add_argument("--bind", help="endpoint to listen on (default tcp://127.0.0.1:5555, or SHOAL_BROKER)")
    parser.add_argument("--server", help="this host's server name for [servers.NAME] blocks")
    parser.add_argument("--no-supervise", action="store_true", help="do not start worker processes")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a bind beyond loopback/ipc without [security] (no CURVE: anyone who reaches "
                             "it owns the queue; or SHOAL_INSECURE=1)")
    add_log_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `broker` command (and of `broker replay ...`, see replay.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["replay"]:  # a subcommand, kept out of the main parser so `broker [flags]` stays as it is
        from ..recovery.replay import main as replay_main

        return replay_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    from shoal.conf import load_settings

    flags: dict[str, object] = {"bind": args.bind, "data": args.data, "server": args.server}
    if args.no_supervise:
        flags["supervise"] = False
    if args.insecure:
        flags["insecure"] = True
    try:
        settings = load_settings(args.config, server=args.server, env=os.environ,
                                 flags={k: v for k, v in flags.items() if v is not None})
    except ConfigError as exc:
        if logging_json():  # --log-format json: every line JSON, this one too
            logging.getLogger("shoal.broker").error("%s", exc)
        else:
            print(f"broker: {exc}", file=sys.stderr)
        return 2
    from .server import serve

    try:
        return serve(settings)
    except ShoalError as exc:
        logging.getLogger("shoal.broker").error("%s", exc)
        if not logging_json():
            print(f"broker: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
