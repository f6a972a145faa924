"""Snapshots taken beside the running broker: a background copy, then the log behind it dropped."""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time

from shoal.conf.settings import Settings
from shoal.errors import StorageFull
from shoal.faults import fault

from .store import ReadInterrupted, Store

log = logging.getLogger("shoal.broker")


class Snapshots:
    """Takes snapshots in a background thread and says how far the log may be dropped.

    A snapshot is a compacted copy of the environment made in one read transaction (LMDB
    copies without blocking writers), so it is the complete state at one log seq; once it
    is safely on disk, the log entries up to that seq are dropped a bounded chunk per pass.
    ``broker replay`` starts from the newest snapshot and applies the log after it.
    """

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.dir = os.path.join(settings.broker.data, "snapshots")
        self.interval_s = settings.broker.snapshot_interval_s
        self.entries = settings.broker.snapshot_entries
        self.keep = settings.broker.snapshot_keep
        self._thread: threading.Thread | None = None
        self._taken_seq = latest_snapshot_seq(self.dir)
        for name in os.listdir(self.dir) if os.path.isdir(self.dir) else []:
            if name.startswith(".snap-partial-"):  # a snapshot cut short by a crash: never used
                drop_directory(os.path.join(self.dir, name))
        self._last_at = time.monotonic()
        self._trimmed_to = 0
        self.error: str | None = None
        self._retry_at = 0.0  # after a failed snapshot, none before this (backs off: 1 s, 2 s, ... 5 min)
        self._failures = 0

    def due(self) -> int:
        """Called each pass: start a snapshot when one is due; the seq to trim the log to (0: none)."""
        if self._thread is None or not self._thread.is_alive():
            behind = self.store.next_seq - 1 - self._taken_seq
            if behind > 0 and time.monotonic() >= self._retry_at and (
                    behind >= self.entries or time.monotonic() - self._last_at >= self.interval_s):
                self._last_at = time.monotonic()
                try:
                    self.store.checkpoint()  # the copy reads what LMDB has committed: all of it
                except StorageFull as exc:
                    log.error("no snapshot now: the checkpoint before it failed: %s", exc)
                    return 0
                self._thread = threading.Thread(target=self._take, name="shoal-snapshot", daemon=True)
                self._thread.start()
        if self._taken_seq > self._trimmed_to:
            if self.store.log_first_seq() in range(1, self._taken_seq + 1):
                return self._taken_seq
            self._trimmed_to = self._taken_seq
        return 0

    def stop(self, timeout_s: float = 10.0) -> None:
        """Wait for a snapshot in progress to stop (``Store.closing`` set) and clean up after itself."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _take(self) -> None:
        try:
            # Linux niceness is per thread: the copy yields the CPU to the loop (and its acks).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
        try:
            fault("during_snapshot")
            existing = snapshot_names(self.dir)
            # The oldest is dropped once this one exists: write over its file instead. Only while
            # at least one newer snapshot stays whole beside the copy being made.
            recycle = os.path.join(self.dir, existing[0]) if self.keep >= 2 and len(existing) >= self.keep else None
            path, seq = self.store.take_snapshot(self.dir, recycle=recycle)
            for old in snapshot_names(self.dir)[:-self.keep]:
                drop_directory(os.path.join(self.dir, old))
            self._taken_seq = seq
            self.error, self._failures = None, 0
            log.info("snapshot at log seq %d in %s", seq, path)
        except ReadInterrupted as exc:  # the map grew meanwhile (the next pass starts it again) or we stop
            self._last_at = 0.0
            log.info("snapshot stopped: %s", exc)
        except Exception as exc:  # the log is kept, nothing is lost; say so and try again later
            self.error = str(exc)
            delay = min(300.0, 2.0 ** self._failures)
            self._failures += 1
            self._retry_at = time.monotonic() + delay
            log.error("snapshot failed (the log is kept; next try in %.0f s): %s", delay, exc)


def drop_directory(path: str, step: int = 8 << 20) -> None:
    """Delete a snapshot directory, shrinking its files a few MiB at a time first: freeing
    ~100 MiB in one unlink makes the next journal commit (which every broker fdatasync waits
    for) take tens of ms; freeing it in steps spreads that over many small commits."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        file = os.path.join(path, name)
        try:
            with open(file, "r+b") as handle:
                size = os.fstat(handle.fileno()).st_size
                while size > 0:
                    size = max(0, size - step)
                    os.ftruncate(handle.fileno(), size)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def snapshot_names(directory: str) -> list[str]:
    """The ``snap-<seq>`` directories under ``directory``, oldest first (none if it is missing)."""
    try:
        return sorted(d for d in os.listdir(directory) if d.startswith("snap-"))
    except FileNotFoundError:
        return []


def latest_snapshot_seq(directory: str) -> int:
    """The log seq of the newest snapshot under ``directory`` (0: none)."""
    return max((int(d[len("snap-"):]) for d in snapshot_names(directory)), default=0)
