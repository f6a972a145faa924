"""Durations and sizes as people write them in shoal.toml: ``"250ms"``, ``"5m"``, ``"16MiB"``.

Parsing and formatting are inverses, so ``shoal config --show`` prints values the
way a user would type them back into the file.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal

DURATION_HINT = 'a duration like "60s", "5m", "1h" or seconds'
MIB = 2**20

_DURATION_UNITS_S: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?P<num>\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>ms|s|m|h|d)?\s*$")

# Decimal and binary units both exist in the wild; "1GB" means 10**9 bytes and
# "1GiB" 2**30, as the SI and IEC define them, so nobody gets a silent 7% surprise.
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[kmgt]i?b|b)\s*$", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """Seconds in ``value``: an int or float of seconds, or text like "250ms", "1.5s", "5m", "1d".

    Raises ``ValueError`` for anything else (negative numbers are returned as
    they are; ranges are the caller's business).
    """
    if isinstance(value, bool):  # bool is an int subclass, but `true` is no duration
        raise ValueError(f"expected {DURATION_HINT}, found {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match["num"]) * _DURATION_UNITS_S[match["unit"] or "s"]
    else:
        raise ValueError(f"expected {DURATION_HINT}, found {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected {DURATION_HINT}, found {value!r}")
    return seconds


def parse_size(value: object, *, bare_unit: int) -> int:
    """Bytes in ``value``: text like "16MiB", "1GB", "512KiB", or an int counted in ``bare_unit`` bytes.

    Fractions of a byte are dropped ("1.5KiB" is 1536 bytes, "0.5B" is 0).
    Raises ``ValueError`` for anything else, negative numbers included.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, found {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size >= 0, found {value!r}")
        return value * bare_unit
    if isinstance(value, str) and (match := _SIZE_RE.match(value)):
        return int(float(match["num"]) * _SIZE_UNITS[match["unit"].lower()])
    raise ValueError(f"expected a size, found {value!r}")


def bytes_to_mib(size: int) -> int:
    """Whole MiB needed to hold ``size`` bytes, rounded up so a nonzero limit never becomes 0 ("off")."""
    return -(-size // MIB)


def format_duration(seconds: float) -> str:
    """The shortest exact way to write ``seconds`` in shoal.toml: 90 -> "90s", 300 -> "5m", 0.25 -> "250ms"."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        scale = _DURATION_UNITS_S[unit]
        count = seconds / scale
        if count == int(count):
            return f"{int(count)}{unit}"
    millis = seconds * 1000
    if millis == int(millis):
        return f"{int(millis)}ms"
    micros = round(seconds * 1e6)
    if micros and abs(seconds * 1e6 - micros) < 1e-6:  # 0.0005 -> "0.5ms"
        return f"{micros / 1000:g}ms"
    return f"{Decimal(repr(seconds)):f}s"  # never an exponent: "1e-07s" would not parse back


def format_mib(mib: int) -> str:
    """A MiB count as a size: 512 -> "512MiB", 2048 -> "2GiB", 0 -> "0"."""
    if mib == 0:
        return "0"
    if mib % 1024 == 0:
        return f"{mib // 1024}GiB"
    return f"{mib}MiB"


def format_bytes(size: int) -> str:
    """A byte count as a size: 16777216 -> "16MiB", 1000 -> "1000B"."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"
