"""Check a parsed shoal.toml table by table, before any precedence is applied.

The result keeps each table's checked values apart (TOML key -> converted
value), because the precedence chain needs to know which table said what.
Problems are collected, not raised, so one run reports every mistake.
"""
from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import cast

from .checks import (
    BROKER_KEYS,
    CRON_DEFAULTS,
    CRON_KEYS,
    CRON_REQUIRED,
    GROUP_KEYS,
    SECURITY_KEYS,
    Checker,
    Invalid,
    describe,
    rate,
    text,
)
from .problems import Problems

TOP_LEVEL_TABLES = ("broker", "workflows", "servers", "cron", "rates", "security")


@dataclass
class Workflows:
    """A checked ``[workflows]``-shaped table: its own keys and its per-group sub-tables."""

    keys: dict[str, object] = field(default_factory=dict)
    groups: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass
class Document:
    """Every table of a checked shoal.toml, in file order."""

    broker: dict[str, object] = field(default_factory=dict)
    workflows: Workflows = field(default_factory=Workflows)
    servers: dict[str, Workflows] = field(default_factory=dict)  # server name -> its workflows
    cron: dict[str, dict[str, object]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)   # workflow name -> jobs per second
    security: dict[str, object] = field(default_factory=dict)
    security_workers: dict[str, str] = field(default_factory=dict)  # [security.workers]: group -> directory


def unknown_key(key: str, known: Collection[str], what: str = "key") -> str:
    """The message for a key nobody knows, with the closest known name when there is one."""
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return f'unknown {what}; did you mean "{close[0]}"?'
    return f"unknown {what}; expected one of: {', '.join(known)}"


def read_document(doc: Mapping[str, object], problems: Problems) -> Document:
    """Check every table of ``doc``; problems go to ``problems`` and the bad values are left out."""
    result = Document()
    for name, value in doc.items():
        if name not in TOP_LEVEL_TABLES:
            problems.in_file((name,), _misplaced_top_level(name))
        elif not isinstance(value, dict):
            problems.in_file((name,), f"expected a table [{name}], found {describe(value)}")
        elif name == "broker":
            checkers = {key: spec.check for key, spec in BROKER_KEYS.items()}
            result.broker = _check_keys(value, ("broker",), checkers, problems)
        elif name == "workflows":
            result.workflows = _read_workflows(value, ("workflows",), problems)
        elif name == "servers":
            result.servers = _read_servers(value, problems)
        elif name == "rates":  # [rates] send-email = "20/m": a global limit for one workflow
            checked = _check_keys(value, ("rates",), {key: rate for key in value}, problems)
            result.rates = {str(key): cast(float, per_s) for key, per_s in checked.items()}
        elif name == "security":
            _read_security(value, result, problems)
        else:
            result.cron = _read_cron(value, problems)
    return result


def _misplaced_top_level(name: str) -> str:
    # A group or broker key at the top of the file is a common slip: say where it goes.
    if name in GROUP_KEYS:
        return "not a top-level key; group settings go under [workflows] or [workflows.<group>]"
    if name in BROKER_KEYS:
        return "not a top-level key; broker settings go under [broker]"
    return unknown_key(name, TOP_LEVEL_TABLES, what="table")


def _check_keys(
    table: Mapping[str, object],
    path: tuple[str, ...],
    checkers: Mapping[str, Checker],
    problems: Problems,
) -> dict[str, object]:
    """Check each key of ``table`` against ``checkers``; return the values that passed."""
    checked: dict[str, object] = {}
    for key, value in table.items():
        check = checkers.get(key)
        if check is None:
            problems.in_file(path + (key,), unknown_key(key, checkers))
            continue
        try:
            checked[key] = check(value)
        except Invalid as exc:
            problems.in_file(path + (key,), str(exc))
    return checked


def _read_workflows(table: Mapping[str, object], path: tuple[str, ...], problems: Problems) -> Workflows:
    """Check a ``[workflows]`` table: plain keys are settings, sub-tables are groups."""
    checkers = {key: spec.check for key, spec in GROUP_KEYS.items()}
    # TOML cannot hold a table and a value under one name, so the type tells them apart.
    settings = {key: value for key, value in table.items() if not isinstance(value, dict)}
    result = Workflows(keys=_check_keys(settings, path, checkers, problems))
    for group, value in table.items():
        if isinstance(value, dict):
            if not group.strip():
                problems.in_file(path + (group,), "expected a group name, found an empty one")
                continue
            result.groups[group] = _check_keys(value, path + (group,), checkers, problems)
    return result


def _read_servers(table: Mapping[str, object], problems: Problems) -> dict[str, Workflows]:
    """Check ``[servers.<name>.workflows...]`` for every server, not just this host's.

    Checking the other hosts' blocks too means a typo is caught wherever the
    file is first loaded, not only on the machine it would affect.
    """
    servers: dict[str, Workflows] = {}
    for server, block in table.items():
        path = ("servers", server)
        if not isinstance(block, dict):
            problems.in_file(path, f"expected a table [servers.{server}], found {describe(block)}")
            continue
        servers[server] = Workflows()
        for key, value in block.items():
            if key != "workflows":
                problems.in_file(path + (key,), unknown_key(key, ("workflows",)))
            elif not isinstance(value, dict):
                problems.in_file(path + (key,), f"expected a table, found {describe(value)}")
            else:
                servers[server] = _read_workflows(value, path + (key,), problems)
    return servers


def _read_security(table: Mapping[str, object], result: Document, problems: Problems) -> None:
    """Check ``[security]`` and its ``[security.workers]`` table (group -> directory of public keys)."""
    keys = {key: value for key, value in table.items() if key != "workers"}
    result.security = _check_keys(keys, ("security",), {k: spec.check for k, spec in SECURITY_KEYS.items()},
                                  problems)
    workers = table.get("workers")
    if workers is None:
        return
    if not isinstance(workers, dict):
        problems.in_file(("security", "workers"), f"expected a table [security.workers], found {describe(workers)}")
        return
    checked = _check_keys(workers, ("security", "workers"), {group: text for group in workers}, problems)
    result.security_workers = {str(group): str(path) for group, path in checked.items()}


def _read_cron(table: Mapping[str, object], problems: Problems) -> dict[str, dict[str, object]]:
    """Type-check ``[cron.<name>]`` entries and fill in the optional keys' defaults."""
    entries: dict[str, dict[str, object]] = {}
    for name, entry in table.items():
        path = ("cron", name)
        if not isinstance(entry, dict):
            problems.in_file(path, f"expected a table [cron.{name}], found {describe(entry)}")
            continue
        checked = _check_keys(entry, path, CRON_KEYS, problems)
        for key in CRON_REQUIRED:
            if key not in entry:
                problems.in_file(path, f'missing required key "{key}"')
        entries[name] = {**CRON_DEFAULTS, **checked}
    return entries
