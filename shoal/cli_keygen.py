"""``shoal keygen NAME [--dir DIR]``: make a CURVE key pair for transport security."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shoal.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The ``shoal keygen`` flags."""
    parser = argparse.ArgumentParser(
        prog="shoal keygen",
        description="Write NAME.key (the public key, to copy into the broker's allow-list directory) and "
                    "NAME.key_secret (mode 0600, stays with its owner), in pyzmq's zmq.auth certificate format.")
    parser.add_argument("name", metavar="NAME", help="the key's name: it names the key in the broker's log lines")
    parser.add_argument("--dir", default=".", metavar="DIR", help="where to write the two files (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """0 after writing both files, 2 when NAME is invalid or a file exists already (nothing is overwritten)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    from shoal.security import keygen

    try:
        public, secret = keygen(args.name, args.dir)
    except ConfigError as exc:
        print(f"shoal keygen: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"shoal keygen: cannot write into {args.dir}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"public key {public} (give it to the broker: clients/, admins/ or workers-GROUP/)")
    print(f"secret key {secret} (mode 0600: keep it with the program that connects with it)")
    return 0
