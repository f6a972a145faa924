"""The write-ahead file: what makes a batch durable before LMDB has it on disk.

A synced LMDB commit costs two syncs (the dirty pages with ``fdatasync``, then the meta page
with ``O_DSYNC``) and one 4 KiB write for every page on every touched table's path: six pages
for one enqueue, 0.8 ms on this VM's disk. Appending the batch's operations to a file whose
blocks already exist and ``fdatasync``-ing it is one small write and one sync with no
metadata to journal: 0.15 ms (BENCHMARKS.md, "The write-ahead file"). So the broker acks a
batch once its record is synced here; the batch also goes into one LMDB write transaction
that stays open across passes and is committed (synced, as before) every
``Store.CHECKPOINT_S``, when this file is half full, and before anything reads LMDB from
outside the loop (a snapshot, a history). A checkpoint bumps the epoch stored inside that
same LMDB commit, and the file is then written again from its start.

Record: ``length u32 | crc32 u32 | epoch u64`` then ``length`` bytes of payload; the crc
covers the epoch and the payload. On open, records are read from offset 0 while they are
whole, their crc matches and their epoch is the one LMDB holds: exactly the batches acked
since the last checkpoint. A torn record (the crash came mid-write, so it was never acked)
ends the scan; records of older epochs after it are leftovers of earlier rounds.

The file is filled with zeros when made (and when it must grow), then synced, so an append
never allocates a block: an overwrite of allocated blocks needs no journal commit, which is
what keeps ``fdatasync`` at one write.
"""
from __future__ import annotations

import errno
import os
import struct
import zlib
from typing import Iterator

from shoal.faults import armed, fault

_HEAD = struct.Struct("<IIQ")
HEAD_BYTES = _HEAD.size
INITIAL_BYTES = 4 << 20   # made this big; grows (doubling) only for a record larger than half of it
_ZEROS = 1 << 20          # zeros written per call when the file is made or grown


class WalError(OSError):
    """The write-ahead file could not be written or synced: the batch is not durable."""


class WriteAheadFile:
    """``DIR/wal``: append, sync, rewind after a checkpoint, read back after a crash."""

    def __init__(self, path: str, create: bool = True) -> None:
        """``create=False``: an existing file, only read (``records``)."""
        self.path = path
        self.fd = os.open(path, (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.pos = 0  # where the next record goes
        if create and self.size < INITIAL_BYTES:
            self._fill(INITIAL_BYTES)

    def _fill(self, size: int) -> None:
        """Zeros up to ``size``, synced with the file's new length (its directory entry too
        when the file is new), so later appends only overwrite."""
        new = self.size == 0
        zeros = bytes(min(_ZEROS, size))
        offset = self.size
        while offset < size:
            offset += os.pwrite(self.fd, zeros[:size - offset], offset)
        os.fsync(self.fd)
        if new:
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self.size = size

    def records(self, epoch: int) -> Iterator[bytes]:
        """The payloads of ``epoch`` from the start, up to the first record that is not one;
        leaves ``pos`` after the last of them."""
        self.pos = 0
        while self.pos + HEAD_BYTES <= self.size:
            head = os.pread(self.fd, HEAD_BYTES, self.pos)
            length, crc, found = _HEAD.unpack(head)
            end = self.pos + HEAD_BYTES + length
            if found != epoch or length == 0 or end > self.size:
                return
            payload = os.pread(self.fd, length, self.pos + HEAD_BYTES)
            if zlib.crc32(payload, zlib.crc32(head[8:])) != crc:
                return  # torn: the crash came while it was written, so it was never acked
            self.pos = end
            yield payload

    def fits(self, payload_bytes: int) -> bool:
        return self.pos + HEAD_BYTES + payload_bytes <= self.size

    def half_full(self) -> bool:
        return self.pos * 2 >= self.size

    def append(self, epoch: int, payload: bytes) -> None:
        """Write one record at ``pos`` and sync it; raises ``WalError`` (nothing is durable then,
        and ``pos`` has not moved: the next record overwrites whatever part of it got out)."""
        need = self.pos + HEAD_BYTES + len(payload)
        try:
            if need > self.size:  # only a record bigger than the room after a checkpoint
                size = self.size
                while size < need:
                    size *= 2
                self._fill(size)
            epoch_raw = struct.pack("<Q", epoch)
            crc = zlib.crc32(payload, zlib.crc32(epoch_raw))
            head = _HEAD.pack(len(payload), crc, epoch)
            if armed("wal_torn"):  # a crash test: half the record out, then the process dies
                os.pwrite(self.fd, (head + payload)[:(HEAD_BYTES + len(payload)) // 2], self.pos)
                fault("wal_torn")
            written = os.pwritev(self.fd, [head, payload], self.pos)
            if written != HEAD_BYTES + len(payload):  # a short write: torn, never acked
                raise OSError(errno.EIO, f"wrote {written} of {HEAD_BYTES + len(payload)} bytes")
            os.fdatasync(self.fd)
        except OSError as exc:
            raise WalError(exc.errno, f"the write-ahead file {self.path}: {exc.strerror or exc}") from None
        self.pos = need

    def rewind(self) -> None:
        """After a checkpoint: every record so far is in LMDB; the next one goes at the start."""
        self.pos = 0

    def close(self) -> None:
        os.close(self.fd)
