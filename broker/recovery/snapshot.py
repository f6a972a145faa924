"""A consistent read of every table, for ``broker replay`` (``Store.snapshot`` makes one).

Part of the storage layer: it holds one open LMDB read transaction from store.py and
hands out raw keys and packed values, leaving decoding to the caller (replay copies
log entries to a new directory without decoding them). It does not import lmdb: only
store.py opens environments and transactions.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

_U64 = struct.Struct(">Q")  # the log's and the expiry index's key layout (see store.py)


class Snapshot:
    """Raw tables as of one read transaction (see ``Store.snapshot``); values stay packed."""

    def __init__(self, txn: Any, tables: dict[str, Any]) -> None:
        self._txn = txn
        self._tables = tables

    def log(self, start_seq: int = 1) -> Iterator[tuple[int, bytes]]:
        """``(seq, packed entry)`` from ``start_seq`` on, in order."""
        cur = self._txn.cursor(db=self._tables["log"])
        if not cur.set_range(_U64.pack(start_seq)):
            return
        for key, raw in cur:
            yield _U64.unpack(key)[0], bytes(raw)  # bytes already (buffers=False): no copy

    def log_backward(self, from_seq: int) -> Iterator[tuple[int, bytes]]:
        """``(seq, packed entry)`` from ``from_seq`` (if present) back to the first."""
        cur = self._txn.cursor(db=self._tables["log"])
        if not cur.set_key(_U64.pack(from_seq)):
            return
        for key, raw in cur.iterprev():
            yield _U64.unpack(key)[0], bytes(raw)

    def log_bounds(self) -> tuple[int, int]:
        """First and last seq in the log; (0, 0) when it is empty."""
        cur = self._txn.cursor(db=self._tables["log"])
        if not cur.first():
            return 0, 0
        first = _U64.unpack(cur.key())[0]
        cur.last()
        return first, _U64.unpack(cur.key())[0]

    def items(self, table: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, packed value)`` of one table, in key order."""
        for key, raw in self._txn.cursor(db=self._tables[table]):
            yield bytes(key), bytes(raw)


def split_expiry_key(key: bytes) -> tuple[int, bytes]:
    """An ``expiry`` key as ``(expire_ms, job id)``."""
    return _U64.unpack(key[:8])[0], bytes(key[8:])

