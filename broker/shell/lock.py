"""One broker per data directory: an exclusive ``flock`` on ``DIR/broker.lock``.

Two brokers writing one LMDB environment would each keep their own in-memory queues
and leases and hand the same job to two workers, so the second one is refused, with
the PID of the first in the message. ``flock`` (not a PID file alone) is what decides:
the kernel drops the lock when its holder dies, even by SIGKILL, so a crashed broker
never leaves a stale lock behind. The PID written into the file is only for the message.

Readers (``broker replay``) do not take this lock: they open the environment
read-only, which LMDB makes safe beside a live writer.
"""
from __future__ import annotations

import errno
import fcntl
import os

from shoal.errors import ShoalError

LOCK_FILE = "broker.lock"


class DataDirInUse(ShoalError):
    """Another process holds the data directory's broker lock."""


class DataDirUnusable(ShoalError):
    """The data directory cannot be made, opened or locked (a file in its place, a parent that is
    missing or not writable); the message names the directory and the reason."""


_HINTS = {
    errno.EEXIST: "a file, not a directory, has that name",
    errno.ENOTDIR: "a part of that path is a file, not a directory",
    errno.EACCES: "this user may not write there",
    errno.EROFS: "that file system is read-only",
}


def unusable(data_dir: str, exc: BaseException) -> DataDirUnusable:
    """The refusal for a data directory that ``exc`` says cannot be used."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    hint = _HINTS.get(exc.errno or 0) if isinstance(exc, OSError) else None
    return DataDirUnusable(f"cannot use {data_dir} as the data directory (--data, [broker] data, SHOAL_DATA): "
                           f"{reason}" + (f": {hint}" if hint else ""))


class DataDirLock:
    """The broker lock of one data directory; ``acquire`` once, ``release`` on close."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``DataDirInUse`` naming the holder's PID."""
        # O_CLOEXEC: worker processes the broker starts must not inherit (and so keep) the lock
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise unusable(os.path.dirname(self.path) or ".", exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process (pid not written yet)"
            raise DataDirInUse(
                f"data directory {os.path.dirname(self.path) or '.'} is in use by another broker ({who}); "
                f"stop that broker first, or give this one another --data"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays: deleting it would race a new holder."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
