"""Job ids: made by the client, unique and time-ordered (UUIDv7 layout)."""
from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_job_id() -> bytes:
    """Return 16 bytes: 48-bit Unix ms, version 7, a 12-bit counter, 62 random bits.

    The counter keeps ids from one process strictly increasing within a millisecond,
    so a client's jobs sort in the order it made them.
    """
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter spent: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            now_ms = _last_ms
        else:
            _last_ms = now_ms
            _counter = 0
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (now_ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return value.to_bytes(16, "big")


def id_to_str(raw: bytes) -> str:
    """The canonical text form users see (8-4-4-4-12 hex), without building a UUID object."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_from_str(text: str | bytes) -> bytes:
    """Parse a job id given as text (or pass through 16 raw bytes)."""
    if isinstance(text, bytes) and len(text) == 16:
        return text
    if isinstance(text, bytes):
        text = text.decode()
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        from .errors import UnknownJob

        raise UnknownJob(f"not a job id: {text!r}") from None
