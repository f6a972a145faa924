"""Config errors with a place: ``shoal.toml:12: workflows.media.concurency: unknown key``.

tomllib returns plain dicts without positions, so line numbers come from a
light second pass over the raw text that notes where each table header and
each ``key =`` line sits. It is best effort (inline tables and keys spread over
several lines fall back to the nearest enclosing table's line), which is all an
error message needs.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from shoal.errors import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dotted(keys: Sequence[str]) -> str:
    """A key path the way TOML writes it: ``servers."eu.1".workflows``."""
    return ".".join(key if _BARE_KEY.fullmatch(key) else _quote(key) for key in keys)


def _quote(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read_key(line: str, start: int) -> tuple[list[str], int] | None:
    """Parse a dotted TOML key at ``line[start:]``; return its parts and where it ends."""
    keys: list[str] = []
    pos = start
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos >= len(line):
            return None
        quote = line[pos]
        if quote in "\"'":
            end = pos + 1
            while end < len(line) and line[end] != quote:
                end += 2 if quote == '"' and line[end] == "\\" else 1
            if end >= len(line):
                return None
            raw = line[pos + 1 : end]
            keys.append(raw.replace('\\"', '"').replace("\\\\", "\\") if quote == '"' else raw)
            pos = end + 1
        else:
            match = _BARE_KEY.match(line, pos)
            if match is None:
                return None
            keys.append(match.group())
            pos = match.end()
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ".":
            pos += 1
            continue
        return keys, pos


class KeyLines:
    """Where each table header and key of a TOML text is (1-based line numbers)."""

    def __init__(self, text: str) -> None:
        self._lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            # Lines inside a multi-line string may look like keys; skip them.
            triple = line.count('"""') + line.count("'''")
            if in_multiline:
                in_multiline = triple % 2 == 0
                continue
            stripped = line.lstrip()
            if stripped.startswith("["):
                array = stripped.startswith("[[")
                parsed = _read_key(stripped, 2 if array else 1)
                if parsed is not None:
                    table = tuple(parsed[0])
                    self._note(table, number)
            elif stripped and not stripped.startswith("#"):
                parsed = _read_key(stripped, 0)
                if parsed is not None and stripped[parsed[1] : parsed[1] + 1] == "=":
                    self._note(table + tuple(parsed[0]), number)
            in_multiline = triple % 2 == 1

    def _note(self, keys: tuple[str, ...], number: int) -> None:
        # A dotted key line also defines its parents; the first mention wins.
        for end in range(1, len(keys) + 1):
            self._lines.setdefault(keys[:end], number)

    def line_of(self, keys: Sequence[str]) -> int | None:
        """The line of ``keys``, else of its nearest parent that has one, else None."""
        path = tuple(keys)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


class Problems:
    """Collects config errors so one run reports all of them, each with its place."""

    def __init__(self, path: str | None = None, text: str = "") -> None:
        self.path = path
        self._key_lines = KeyLines(text)
        self.messages: list[str] = []

    def in_file(self, keys: Sequence[str], message: str) -> None:
        """Record a problem with the value at ``keys`` in the config file."""
        line = self._key_lines.line_of(keys)
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        self.messages.append(f"{where}: {dotted(keys)}: {message}")

    def elsewhere(self, where: str, key: str, message: str) -> None:
        """Record a problem in the environment or the flags (``where`` says which)."""
        self.messages.append(f"{where}: {key}: {message}")

    def raise_if_any(self) -> None:
        """Raise one ConfigError listing every problem, one per line."""
        if self.messages:
            raise ConfigError("\n".join(self.messages))
