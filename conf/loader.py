"""Build one frozen ``Settings`` from shoal.toml, the environment and the flags.

Precedence, lowest first: built-in defaults, ``[workflows]``,
``[workflows.<group>]``, ``[servers.<name>.workflows]``,
``[servers.<name>.workflows.<group>]``, environment, flags. Every effective
group value remembers which of those it came from (``Settings.sources``).
"""
from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from shoal import faults
from shoal.errors import ConfigError

from .checks import BROKER_KEYS, GROUP_KEYS, SECURITY_KEYS, Invalid, Key
from .problems import Problems, dotted
from .settings import DEFAULT_GROUP, BrokerSettings, GroupSettings, SecuritySettings, Settings
from .tables import Document, read_document, unknown_key

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG = "shoal.toml"

# Environment variables that override a [broker] key. SHOAL_BROKER is the
# broker's bind endpoint and the endpoint workers and clients connect to.
ENV_BROKER_KEYS: dict[str, str] = {"SHOAL_BROKER": "bind", "SHOAL_DATA": "data", "SHOAL_INSECURE": "insecure",
                                   "SHOAL_METRICS_TOKEN": "metrics_token"}
FLAG_BROKER_KEYS = ("bind", "data", "supervise", "insecure")
# A client's or worker's own key and the broker's public key (`--key`, `--broker-key`).
ENV_SECURITY_KEYS: dict[str, str] = {"SHOAL_KEY": "key", "SHOAL_BROKER_KEY": "broker_public_key"}
FLAG_SECURITY_KEYS = ("key", "broker_public_key")
# These flags apply to every group (a worker serves one group, so "every" is that one).
FLAG_GROUP_KEYS = ("concurrency", "app")
FLAG_KEYS = FLAG_BROKER_KEYS + FLAG_GROUP_KEYS + FLAG_SECURITY_KEYS + ("server",)

Layer = tuple[str, Mapping[str, object]]  # (source label, TOML key -> checked value)
_Folded = TypeVar("_Folded", BrokerSettings, GroupSettings, SecuritySettings)


def load_settings(
    path: str | None = None,
    *,
    server: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """Read, check and combine the config file, the environment and the flags.

    ``path`` is the ``--config`` flag; without it ``SHOAL_CONFIG`` names the
    file, else ``./shoal.toml`` is read when present, else only defaults apply.
    ``server`` (the ``--server`` flag, as is ``flags["server"]``) picks which
    ``[servers.<name>]`` blocks apply; it defaults to ``SHOAL_SERVER``, then the
    host name. ``env`` defaults to ``os.environ``. ``flags`` holds command-line
    values by key (``bind``, ``data``, ``server``, ``supervise``, ``insecure``,
    ``concurrency``, ``app``, ``key``, ``broker_public_key``); ``None`` values mean
    "not given". ``[security]`` follows the same chain as ``[broker]``: the file,
    then ``SHOAL_KEY`` / ``SHOAL_BROKER_KEY``, then the flags.

    Raises ``ConfigError`` listing every problem found, each naming its place.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    faults.check(environ.get("SHOAL_FAULT", ""))
    given = {key: value for key, value in (flags or {}).items() if value is not None}
    for key in given:
        if key not in FLAG_KEYS:  # a caller's slip: fail loudly rather than drop the flag
            raise ConfigError(f"flags: {key}: {unknown_key(key, FLAG_KEYS, what='flag')}")
    config_path = find_config(path, environ)
    text = _read_text(config_path) if config_path is not None else ""
    problems = Problems(config_path, text)
    document = read_document(_parse_toml(config_path, text), problems)
    server_name = _server_name(server, given, environ, problems)
    broker, broker_sources = _build_table(BrokerSettings(), BROKER_KEYS, ("[broker]", document.broker),
                                          ENV_BROKER_KEYS, FLAG_BROKER_KEYS, environ, given, problems)
    security, security_sources = _build_table(
        SecuritySettings(workers=document.security_workers), SECURITY_KEYS, ("[security]", document.security),
        ENV_SECURITY_KEYS, FLAG_SECURITY_KEYS, environ, given, problems)
    group_flags = _checked_overrides(given, FLAG_GROUP_KEYS, GROUP_KEYS, "flags", problems)
    problems.raise_if_any()
    settings = _assemble(document, server_name, broker, broker_sources, group_flags, config_path)
    return replace(settings, security=security, security_sources=security_sources)


def find_config(path: str | None, env: Mapping[str, str]) -> str | None:
    """The config file to read: ``path``, else ``SHOAL_CONFIG``, else ``./shoal.toml`` if present."""
    if path is not None:
        origin = "--config"
    elif env.get("SHOAL_CONFIG"):
        path, origin = env["SHOAL_CONFIG"], "SHOAL_CONFIG"
    else:
        return DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None
    # A file named on purpose must exist; silently running on defaults would hide the typo.
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found (named by {origin})")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: not a file (named by {origin})")
    return path


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text, which TOML requires ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def _parse_toml(path: str | None, text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "(at line N, column M)"; lift the line to the front like every other error.
        found = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{found.group(1)}" if found else f"{path}"
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None


def _server_name(
    server: str | None, flags: Mapping[str, object], env: Mapping[str, str], problems: Problems
) -> str:
    name = server if server is not None else flags.get("server")
    if name is None:
        name = env.get("SHOAL_SERVER") or socket.gethostname()
    if not isinstance(name, str) or not name.strip():
        problems.elsewhere("flags", "server", f"expected a server name, found {name!r}")
        return "localhost"
    return name


def _checked_overrides(
    values: Mapping[str, object],
    wanted: Iterable[str],
    keys: Mapping[str, Key],
    where: str,
    problems: Problems,
) -> dict[str, object]:
    """Check the flag values among ``wanted``; text is read the way the environment is."""
    checked: dict[str, object] = {}
    for key in wanted:
        if key not in values:
            continue
        raw = values[key]
        spec = keys[key]
        try:
            checked[key] = spec.check(spec.from_text(raw) if isinstance(raw, str) else raw)
        except Invalid as exc:
            problems.elsewhere(where, key, str(exc))
    return checked


def _build_table(
    base: _Folded,
    keys: Mapping[str, Key],
    table: Layer,
    env_keys: Mapping[str, str],
    flag_keys: Iterable[str],
    env: Mapping[str, str],
    flags: Mapping[str, object],
    problems: Problems,
) -> tuple[_Folded, dict[str, str]]:
    """One flat table (``[broker]``, ``[security]``): the file, then its environment variables, then flags."""
    env_values = {key: env[var] for var, key in env_keys.items() if env.get(var)}
    names = {key: var for var, key in env_keys.items()}
    from_env: dict[str, object] = {}
    for key, raw in env_values.items():
        spec = keys[key]
        try:
            from_env[key] = spec.check(spec.from_text(raw))
        except Invalid as exc:
            problems.elsewhere("environment", names[key], str(exc))
    from_flags = _checked_overrides(flags, flag_keys, keys, "flags", problems)
    layers: list[Layer] = [table, ("env", from_env), ("flag", from_flags)]
    return _fold(base, keys, layers)


def _fold(
    base: _Folded, keys: Mapping[str, Key], layers: Iterable[Layer], **fixed: object
) -> tuple[_Folded, dict[str, str]]:
    """Apply ``layers`` in order over ``base``; return the result and where each key came from."""
    # Any: each value's type was settled by its key's checker, which mypy cannot follow.
    changes: dict[str, Any] = dict(fixed)
    sources = {key: "default" for key in keys}
    for label, values in layers:
        for key, value in values.items():
            changes[keys[key].field] = value
            sources[key] = label
    return replace(base, **changes), sources


def _assemble(
    document: Document,
    server: str,
    broker: BrokerSettings,
    broker_sources: dict[str, str],
    group_flags: Mapping[str, object],
    path: str | None,
) -> Settings:
    """Run the precedence chain for every group of this host."""
    workflows = document.workflows
    here = document.servers.get(server)
    here_keys: Mapping[str, object] = here.keys if here is not None else {}
    here_groups: Mapping[str, Mapping[str, object]] = here.groups if here is not None else {}
    host_label = f"[{dotted(('servers', server, 'workflows'))}]"
    flag_layer: Layer = ("flag", group_flags)

    defaults, _ = _fold(
        GroupSettings(), GROUP_KEYS,
        [("[workflows]", workflows.keys), (host_label, here_keys), flag_layer],
        name=DEFAULT_GROUP,
    )
    groups: dict[str, GroupSettings] = {}
    sources: dict[str, dict[str, str]] = {}
    for group in dict.fromkeys([DEFAULT_GROUP, *workflows.groups, *here_groups]):
        layers: list[Layer] = [
            ("[workflows]", workflows.keys),
            (f"[{dotted(('workflows', group))}]", workflows.groups.get(group, {})),
            (host_label, here_keys),
            (f"[{dotted(('servers', server, 'workflows', group))}]", here_groups.get(group, {})),
            flag_layer,
        ]
        groups[group], sources[group] = _fold(GroupSettings(), GROUP_KEYS, layers, name=group)
    return Settings(
        server=server,
        broker=broker,
        defaults=defaults,
        groups=groups,
        sources=sources,
        path=path,
        cron=document.cron,
        rates=document.rates,
        unknown_server_groups=_unknown_server_groups(document, server),
        broker_sources=broker_sources,
    )


def _unknown_server_groups(document: Document, server: str) -> dict[str, list[str]]:
    """Groups that only other hosts' blocks name: not groups here, but likely typos to report."""
    defined = set(document.workflows.groups) | {DEFAULT_GROUP}
    unknown: dict[str, list[str]] = {}
    for other, block in document.servers.items():
        missing = [group for group in block.groups if group not in defined]
        if other != server and missing:
            unknown[other] = missing
    return unknown
