"""``shoal config --show``: the effective settings per group and where each value came from."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from shoal.errors import ConfigError

from .checks import BROKER_KEYS, GROUP_KEYS, SECURITY_KEYS, Key
from .durations import format_bytes, format_duration, format_mib
from .loader import load_settings
from .problems import dotted
from .settings import BrokerSettings, GroupSettings, SecuritySettings, Settings


def render(settings: Settings, as_json: bool = False) -> str:
    """The effective config as text for people, or as JSON for scripts.

    JSON is ``{"server": NAME, "groups": {GROUP: {KEY: {"value": V, "source": S}}}}``
    with TOML key names; durations are seconds, ``max_memory`` is MiB and
    ``app`` is a list. Text is a table per section plus a note for groups that
    only other servers' blocks name.
    """
    if as_json:
        groups = {
            name: {
                key: {"value": _json_value(group, spec), "source": _source(settings, name, key)}
                for key, spec in GROUP_KEYS.items()
            }
            for name, group in settings.groups.items()
        }
        return json.dumps({"server": settings.server, "groups": groups}, indent=2)
    return "\n".join(_text_lines(settings))


def _source(settings: Settings, group: str, key: str) -> str:
    return settings.sources.get(group, {}).get(key, "default")


def _json_value(group: GroupSettings, spec: Key) -> object:
    value = getattr(group, spec.field)
    return list(value) if isinstance(value, tuple) else value


def _shown(owner: GroupSettings | BrokerSettings | SecuritySettings, spec: Key) -> str:
    """A value written the way shoal.toml takes it; the field's unit suffix says how."""
    value = getattr(owner, spec.field)
    if spec.field.endswith("_token"):
        return "(set)" if value else ""  # a secret is not printed
    if spec.field.endswith("_per_s"):
        return f"{value:g}/s" if value else "none"
    if spec.field.endswith("_s"):
        return format_duration(value)
    if spec.field.endswith("_mb"):
        return format_mib(value)
    if spec.field.endswith("_bytes"):
        return format_bytes(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) if value else "-"
    return str(value)


def _text_lines(settings: Settings) -> list[str]:
    lines = [f"server: {settings.server}", f"config: {settings.path or '(none: built-in defaults)'}", ""]
    broker_rows = [
        [key, _shown(settings.broker, spec), settings.broker_sources.get(key, "default")]
        for key, spec in BROKER_KEYS.items()
    ]
    lines += _table(["BROKER", "VALUE", "SOURCE"], broker_rows)
    lines.append("")
    security = settings.security
    security_rows = [
        [key, _shown(security, spec) or "-", settings.security_sources.get(key, "default")]
        for key, spec in SECURITY_KEYS.items()
    ] + [[f"workers.{group}", path, "[security.workers]"] for group, path in security.workers.items()]
    lines += _table(["SECURITY", "VALUE", "SOURCE"], security_rows)
    lines.append("")
    # The group goes on every row so `shoal config --show | grep media` keeps the context.
    group_rows = [
        [name, key, _shown(group, spec), _source(settings, name, key)]
        for name, group in settings.groups.items()
        for key, spec in GROUP_KEYS.items()
    ]
    table = _table(["GROUP", "KEY", "VALUE", "SOURCE"], group_rows)
    lines.append(table[0])
    for row, line in zip(group_rows, table[1:]):
        if row[1] == next(iter(GROUP_KEYS)) and row is not group_rows[0]:
            lines.append("")  # a blank line between groups, columns still aligned across all
        lines.append(line)
    for server, groups in settings.unknown_server_groups.items():
        tables = ", ".join(f"[{dotted(('servers', server, 'workflows', group))}]" for group in groups)
        lines.append("")
        lines.append(
            f"note: {tables} names a group that no [workflows.<group>] defines; "
            f"ignored on this server ({settings.server})"
        )
    return lines


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in [headers, *rows]
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``shoal config --show [--server NAME] [--json] [--config FILE]``; ``argv`` follows ``config``.

    Returns 0 after printing the settings, 2 after printing a config or usage error.
    """
    parser = argparse.ArgumentParser(
        prog="shoal config", description="Show the effective configuration and where each value came from."
    )
    parser.add_argument("--show", action="store_true", help="print the effective settings per group")
    parser.add_argument("--server", help="the server whose [servers.<name>] blocks apply (default: SHOAL_SERVER, else the host name)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--config", help="config file (default: SHOAL_CONFIG, else ./shoal.toml when present)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors; report the code instead
        return exc.code if isinstance(exc.code, int) else 2
    if not args.show:
        parser.print_usage(sys.stderr)
        print("shoal config: nothing to do; try --show", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config, server=args.server)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(render(settings, as_json=args.json))
    return 0
