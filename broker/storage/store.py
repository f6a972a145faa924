"""LMDB storage: the only module that imports lmdb.

One environment, named databases. Every state change in a batch of broker decisions (one
pass of the loop: group commit) is written twice: to the state tables and, as an entry, to
the append-only ``log``, which is enough to rebuild every job (``broker replay`` builds on it).

A batch is durable, and may be acked, once its writes are synced in the write-ahead file
(wal.py). The same writes go into one LMDB write transaction that stays open across
batches; it is committed (synced) at a checkpoint: every ``CHECKPOINT_S``, when the file is
half full, before a snapshot or a history reads LMDB from another thread, and on close. The
loop's own reads go through that open transaction, so they see every batch. A broker that
dies between checkpoints leaves its last batches in the file; the next open applies them.

Tables:
    jobs      id(16)                 -> job record (a row: msgpack array, shoal.jobs.RECORD_FIELDS)
    log       seq(8, big-endian)     -> [wall_ms, op, id, changes]
    expiry    expire_ms(8) + id(16)  -> b""       finished jobs, by when they go
    steps     id(16) + step name     -> step record {value | error, permanent, ...}
    routes    workflow name (utf-8)  -> {group, retries}
    counters  group name (utf-8)     -> {completed, failed, retried, dead}
    meta      name                   -> value (schema version; cron:<entry> -> last fired tick)

A writable ``Store`` holds ``DIR/broker.lock`` (lock.py): one broker per directory.
``Store(path, readonly=True)`` and ``snapshot()`` are how ``broker replay`` reads.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, cast

import lmdb

from shoal.errors import ShoalError, StorageFull
from shoal.faults import fault
from shoal.jobs import as_record, as_row
from shoal.protocol import pack, packer, unpack

from .batch import Batch
from .wal import WalError, WriteAheadFile
from ..shell.lock import DataDirInUse, DataDirLock, unusable
from ..recovery.snapshot import Snapshot

log = logging.getLogger("shoal.broker")

# 2: a job's record is stored as a row (a msgpack array in shoal.jobs.RECORD_FIELDS order),
# in the jobs table and in its log entry of birth; 1 stored maps, which still read.
SCHEMA_VERSION = 2
_U64 = struct.Struct(">Q")
CRON_PREFIX = b"cron:"
LOG_BASE = b"log_base"  # meta: every log entry up to this seq was dropped behind a snapshot
WAL_EPOCH = b"wal_epoch"  # meta: the write-ahead file's records of this epoch are not in LMDB yet
# A batch's writes, as the write-ahead file keeps them (msgpack lists; tables by index in _TABLES)
_PUT, _APPEND, _DELETE, _DROP_STEPS, _TRIM = range(5)
_T_JOBS, _T_LOG, _T_EXPIRY, _T_ROUTES, _T_COUNTERS, _T_STEPS, _T_META = range(7)
_LOG_HEAD = b"\x94"  # msgpack fixarray of 4
_BIN16 = b"\xc4\x10"  # msgpack bin 8 header of a 16-byte job id
_PACKED_OPS: dict[str, bytes] = {}  # a log entry's op, packed once (a handful of names)
# A snapshot is written and fdatasync'ed this much at a time: the broker's own commit syncs
# queue behind at most this much snapshot I/O. Measured (BENCHMARKS.md, "Snapshot stalls"):
# 1 MiB doubled the enqueue p99 during a snapshot, 256 KiB left it where it is without one,
# 64 KiB made the copy 2.5x slower for no gain.
SNAPSHOT_SYNC_BYTES = 256 << 10
_YIELD_EVERY = 2_000  # log entries a background scan reads between two offers of the GIL (~1 ms)
# Writing blocks a file did not have (a first snapshot, or a copy that outgrew the recycled
# file) is paced to this rate: on a thin-provisioned disk with discard (this VM's), every new
# block costs the host an allocation and unpaced writes tripled the enqueue p99; at 50 MiB/s
# it stayed where it is without a snapshot (BENCHMARKS.md). Overwrites are not paced; cutting
# a recycled file that was longer (freeing blocks, discarded) is paced the same way.
SNAPSHOT_NEW_BYTES_PER_S = 50 << 20


# Job records are packed by one Packer kept for the loop (packb makes a Packer per call): the
# same bytes, a quarter faster. Only the loop's thread commits.
pack_record = packer()


def _pack_op(op: str) -> bytes:
    raw = _PACKED_OPS[op] = pack(op)
    return raw


def _fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory's entries: a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load(raw: bytes) -> Any:
    """Decode our own stored data: no peer's size limit applies (a record may hold a full-size payload)."""
    return unpack(raw, max_bytes=1 << 40)
_MAX_MAP_BYTES = 1 << 40
_TABLES = ("jobs", "log", "expiry", "routes", "counters", "steps", "meta")


class ReadInterrupted(ShoalError):
    """A background read stopped early: the map must grow (it is simply done again), or the
    broker is stopping."""


class NotADataDir(ShoalError):
    """A directory given as Shoal data is not one (no LMDB environment, or not Shoal's)."""


def _open_readonly(path: str) -> lmdb.Environment:
    """An existing environment, read-only; anything else is a clear ``NotADataDir``."""
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise NotADataDir(f"{path} is not a Shoal data directory (no data.mdb in it)")
    try:
        # lock=True: LMDB's reader table lets this process read beside a live broker safely
        return lmdb.open(path, readonly=True, create=False, max_dbs=16, lock=True)
    except lmdb.Error as exc:
        raise NotADataDir(f"{path} is not a readable LMDB environment: {exc}") from None


class Store:
    """The broker's LMDB environment.

    Opened for writing it holds the data directory's broker lock (one broker per
    directory). ``readonly=True`` opens an existing directory for ``broker replay``:
    no lock, no writes, safe beside a live broker.
    """

    CHECKPOINT_S = 0.05  # the open transaction is committed at most this long after its first batch

    def __init__(self, path: str, map_size_mb: int = 1024, readonly: bool = False, write_ahead: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        self.lock: DataDirLock | None = None
        # Read transactions of other threads (snapshots, history): LMDB unmaps and maps the file
        # again to resize it, so the map may only grow while none of them is open.
        self._readers = threading.Condition()
        self._background_readers = 0
        self.growth_wanted = False
        self.closing = False  # close() stops background readers before the environment goes
        self._txn: lmdb.Transaction[bytes] | None = None  # the open write transaction (batches since the checkpoint)
        self._owner = 0                             # the thread that opened it (the loop's): its reads use it
        self._pending: list[bytes] = []             # their write-ahead payloads, to write them again
        self.checkpoint_at = 0.0                    # monotonic; 0: nothing waits for a checkpoint
        self._retry_at = 0.0                        # after a failed checkpoint, none before this
        self.epoch = 0
        self.wal: WriteAheadFile | None = None
        self.write_ahead = write_ahead and not readonly
        if readonly:
            _recover_if_stopped(path)
            self.env = _open_readonly(path)
        else:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:  # a file in its place, a parent missing or not writable
                raise unusable(path, exc) from None
            self.lock = DataDirLock(path)
            self.lock.acquire()  # first: a refused second broker must not touch the environment
            try:
                self.env = lmdb.open(
                    path,
                    map_size=map_size_mb * 1024 * 1024,
                    max_dbs=16,
                    sync=True,       # an ack is sent only after fsync: nothing acknowledged is lost
                    metasync=True,
                    writemap=False,
                    max_readers=126,
                )
            except lmdb.Error as exc:  # not writable, or a file system LMDB cannot map
                self.lock.release()
                raise unusable(path, exc) from None
            except BaseException:
                self.lock.release()
                raise
        try:
            self._open_tables()
            if not readonly:
                self.wal = WriteAheadFile(os.path.join(path, "wal"))
                self._recover()
        except BaseException:
            self.close()
            raise

    def _open_tables(self) -> None:
        if not self.readonly:
            self.env.reader_check()  # clear slots of readers that died
        self._jobs = self._table(b"jobs")
        self._log = self._table(b"log")
        self._expiry = self._table(b"expiry")
        self._routes = self._table(b"routes")
        self._counters = self._table(b"counters")
        self._steps = self._table(b"steps")
        self._meta = self._table(b"meta")
        self._dbs = [getattr(self, f"_{name}") for name in _TABLES]
        self.next_seq = self._load_next_seq()
        self._check_schema()

    def _table(self, name: bytes) -> Any:
        if not self.readonly:
            return self.env.open_db(name)
        try:
            return self.env.open_db(name, create=False)
        except lmdb.NotFoundError:
            raise NotADataDir(f"{self.path} is not a Shoal data directory (it has no {name.decode()!r} table)") from None

    # --- reading --------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator["lmdb.Transaction[bytes]"]:
        """The loop's reads see every batch: through the open write transaction, if any (it is
        the writing thread's; other threads read what the last checkpoint committed)."""
        if self._txn is not None and threading.get_ident() == self._owner:
            yield self._txn
            return
        with self.env.begin(buffers=False) as txn:
            yield cast("lmdb.Transaction[bytes]", txn)

    def _check_schema(self) -> None:
        with self.env.begin(write=not self.readonly) as txn:
            raw = txn.get(b"schema", db=self._meta)
            if raw is None:
                if self.readonly:
                    raise NotADataDir(f"{self.path} is not a Shoal data directory (no schema version in its meta table)")
                txn.put(b"schema", pack(SCHEMA_VERSION), db=self._meta)
                return
            found = _load(raw)
            if not isinstance(found, int) or found > SCHEMA_VERSION:
                raise ShoalError(
                    f"{self.path} was written by a newer Shoal (schema {found}, this is {SCHEMA_VERSION}); "
                    "refusing to open it")
            if found < SCHEMA_VERSION and not self.readonly:
                # what schema 1 stored still reads; a version that knows only 1 must not open what we write now
                txn.put(b"schema", pack(SCHEMA_VERSION), db=self._meta)

    def _load_next_seq(self) -> int:
        return self.last_seq() + 1  # after a trim the log may be empty: seqs never restart

    def get_job(self, job_id: bytes) -> dict[str, Any] | None:
        """The stored record of one job, or None."""
        if len(job_id) != 16:
            return None
        with self._reading() as txn:
            raw = txn.get(job_id, db=self._jobs)
        return None if raw is None else as_record(_load(raw))

    def has_jobs(self, job_ids: list[bytes]) -> set[bytes]:
        """Which of these ids are stored.

        Ids are time-ordered (UUIDv7), so a call's new ids usually sort after every stored one:
        when no stored key lies between the smallest and the largest asked for, none is stored,
        known from one cursor step instead of a lookup per id (an ENQUEUE of 1,000 jobs)."""
        ids = [j for j in job_ids if len(j) == 16]
        if not ids:
            return set()
        with self._reading() as txn:
            if len(ids) > 1:
                cur = txn.cursor(db=self._jobs)
                if not cur.set_range(min(ids)) or bytes(cur.key()) > max(ids):
                    return set()
            return {j for j in ids if txn.get(j, db=self._jobs) is not None}

    def iter_jobs(self) -> Iterator[dict[str, Any]]:
        """Every stored job record (used once at start to rebuild the in-memory queues)."""
        with self._reading() as txn:
            for _, raw in txn.cursor(db=self._jobs):
                yield as_record(_load(raw))

    def steps_of(self, job_id: bytes) -> dict[str, dict[str, Any]]:
        """Every stored step of one job, by name."""
        out: dict[str, dict[str, Any]] = {}
        if len(job_id) != 16:
            return out
        with self._reading() as txn:
            cur = txn.cursor(db=self._steps)
            if cur.set_range(job_id):
                for key, raw in cur:
                    if key[:16] != job_id:
                        break
                    out[bytes(key[16:]).decode()] = _load(raw)
        return out

    def routes(self) -> dict[str, dict[str, Any]]:
        """The routing table learned from workers' HELLOs."""
        with self._reading() as txn:
            return {k.decode(): _load(v) for k, v in txn.cursor(db=self._routes)}

    def counters(self) -> dict[str, dict[str, int]]:
        """Cumulative per-group counters."""
        with self._reading() as txn:
            return {k.decode(): _load(v) for k, v in txn.cursor(db=self._counters)}

    def expired(self, now_ms: int, limit: int = 1000) -> list[tuple[int, bytes]]:
        """Finished jobs whose retention ended, oldest first."""
        out: list[tuple[int, bytes]] = []
        with self._reading() as txn:
            cur = txn.cursor(db=self._expiry)
            for key in cur.iternext(keys=True, values=False):
                expire_ms = _U64.unpack(key[:8])[0]
                if expire_ms > now_ms or len(out) >= limit:
                    break
                out.append((expire_ms, bytes(key[8:])))
        return out

    def iter_log(self, start_seq: int = 1) -> Iterator[tuple[int, list[Any]]]:
        """Log entries from ``start_seq`` on: (seq, [wall_ms, op, id, changes])."""
        with self._reading() as txn:
            cur = txn.cursor(db=self._log)
            if not cur.set_range(_U64.pack(start_seq)):
                return
            for key, raw in cur:
                yield _U64.unpack(key)[0], _load(raw)

    def log_of(self, job_id: bytes, limit: int) -> tuple[list[tuple[int, list[Any]]], int]:
        """One job's log entries, oldest first: at most the newest ``limit``, and how many
        older ones were left out. A scan of the whole log (there is no per-job index yet);
        a cheap byte search skips the entries of other jobs without decoding them.

        Called from a thread other than the loop's (history_reader.py). The scan lets go of
        the GIL every few thousand entries (the loop waits at most that long for it) and
        starts again if the map must grow meanwhile (see ``background_read``)."""
        while True:
            kept: deque[tuple[int, list[Any]]] = deque(maxlen=limit)
            seen = 0
            with self.background_read() as txn:
                try:
                    for n, (key, raw) in enumerate(txn.cursor(db=self._log)):
                        if n % _YIELD_EVERY == 0 and n:
                            self.check_interrupted()
                            time.sleep(0)  # the GIL to the loop, if it wants it
                        if job_id not in raw:
                            continue
                        entry = _unpack_entry(bytes(raw))  # bytes already (buffers=False): no copy
                        if entry[2] == job_id:
                            kept.append((_U64.unpack(key)[0], entry))
                            seen += 1
                except ReadInterrupted:
                    if self.closing:
                        raise
                    continue  # the map grew: read it all again
            return list(kept), seen - len(kept)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """Every table as of one moment (one read transaction): a replay that compares the
        log with the tables never sees a commit land between reading one and the other."""
        if not self.readonly:
            self.checkpoint()  # a read transaction sees what LMDB has committed
        try:
            txn = self.env.begin(buffers=False)
        except lmdb.MapResizedError:  # a live broker grew the map since we opened it
            self.env.set_mapsize(0)
            txn = self.env.begin(buffers=False)
        try:
            yield Snapshot(txn, {name: getattr(self, f"_{name}") for name in _TABLES})
        finally:
            txn.abort()

    # --- writing --------------------------------------------------------------
    def copy_log(self, entries: Iterable[tuple[int, bytes]], chunk: int = 10_000) -> int:
        """Append raw log entries ``(seq, packed entry)`` unchanged, keeping their seqs and
        times (``broker replay --out``: the new directory can itself be replayed). Only for
        a log that is empty or ends before the first seq given. Returns how many."""
        written = 0
        pending: list[tuple[int, bytes]] = []
        for item in entries:
            pending.append(item)
            if len(pending) >= chunk:
                written += self._append_raw(pending)
                pending = []
        if pending:
            written += self._append_raw(pending)
        return written

    def _append_raw(self, items: list[tuple[int, bytes]]) -> int:
        self.checkpoint()  # a write transaction of its own: none may be open in this thread
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    cur = txn.cursor(db=self._log)
                    for seq, raw in items:
                        if not cur.put(_U64.pack(seq), raw, append=True):
                            raise ShoalError(f"log entry {seq} is out of order in {self.path}")
                break
            except lmdb.MapFullError:
                self._grow()
        self.next_seq = max(self.next_seq, items[-1][0] + 1)
        return len(items)

    def commit(self, batch: Batch, wall_ms: int) -> None:
        """Make one batch durable: its writes synced in the write-ahead file and applied to the
        open LMDB transaction (``write_ahead=False``: one synced LMDB commit of its own).
        Grows the map when it is full.

        Raises ``StorageFull`` when the map is at ``max_size``, the disk is full or the
        write-ahead file cannot be written; nothing of the batch is stored then.
        """
        if not batch:
            return
        ops, seq = self._ops(batch, wall_ms)
        if not self.write_ahead:
            self._commit_alone(ops)
        else:
            payload = pack(ops)
            wal = cast(WriteAheadFile, self.wal)
            if not wal.fits(len(payload)):
                try:
                    self.checkpoint()  # before the batch is in the transaction: it must not land in LMDB unacked
                except StorageFull as exc:  # the file grows instead, if the disk lets it
                    log.error("checkpoint failed, the write-ahead file keeps the batches: %s", exc)
            self._apply_live(ops)
            try:
                wal.append(self.epoch, payload)
            except WalError as exc:
                self._restart_txn()  # the batch leaves the transaction; the ones before it stay
                raise StorageFull(f"{exc}; the batch is not stored") from None
            if not self._pending:
                self.checkpoint_at = time.monotonic() + self.CHECKPOINT_S
            self._pending.append(payload)
        self.next_seq = seq

    def _commit_alone(self, ops: list[list[Any]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    self._apply(txn, ops)
                return
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                _raise_if_full(exc, self.path)
                raise

    def _apply_live(self, ops: list[list[Any]]) -> None:
        """Apply to the open transaction (opened if none); a full map is grown and the
        transaction's batches written again before this one."""
        while True:
            if self._txn is None:
                self._txn = self._begin()
            try:
                self._apply(self._txn, ops)
                return
            except lmdb.MapFullError:
                self._restart_txn(grow=True)
            except lmdb.Error as exc:
                self._restart_txn()
                _raise_if_full(exc, self.path)
                raise

    def _begin(self) -> "lmdb.Transaction[bytes]":
        self._owner = threading.get_ident()  # LMDB: a write transaction is its thread's alone
        return cast("lmdb.Transaction[bytes]", self.env.begin(write=True))

    def _restart_txn(self, grow: bool = False) -> None:
        """Abort the open transaction and write its acked batches into a new one (growing the
        map between the two when ``grow``: LMDB resizes only with no transaction open)."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        try:
            if grow:
                self._grow()
        finally:
            if self._pending:
                txn = self._txn = self._begin()
                for payload in self._pending:
                    self._apply(txn, _load(payload))

    def checkpoint_deadline(self) -> float:
        """When the loop must wake for a checkpoint (monotonic), 0 when none waits."""
        return max(self.checkpoint_at, self._retry_at) if self.checkpoint_at else 0.0

    def checkpoint_due(self, now: float) -> bool:
        """Whether the loop should checkpoint now: the oldest uncommitted batch is
        ``CHECKPOINT_S`` old, or the write-ahead file is half full."""
        if not self.checkpoint_at or now < self._retry_at:
            return False
        return now >= self.checkpoint_at or cast(WriteAheadFile, self.wal).half_full()

    def checkpoint(self) -> None:
        """Commit the open transaction (synced), then write the file from its start again.

        The new epoch is stored in that same commit: after it, the file's records are of an
        older epoch and never applied again. Raises ``StorageFull`` when LMDB cannot commit
        (a full disk): the transaction is rebuilt and the acked batches stay in the file."""
        while (txn := self._txn) is not None:
            try:
                txn.put(WAL_EPOCH, pack(self.epoch + 1), db=self._meta)
                txn.commit()
                break
            except lmdb.MapFullError:  # (_restart_txn aborts it: a no-op after a failed commit)
                try:
                    self._restart_txn(grow=True)
                except StorageFull:
                    self._retry_at = time.monotonic() + 1.0
                    raise
            except lmdb.Error as exc:
                self._restart_txn()
                self._retry_at = time.monotonic() + 1.0  # try again, not every pass
                _raise_if_full(exc, self.path)
                raise StorageFull(f"the checkpoint of {self.path} failed: {exc}") from None
        if txn is None:
            return
        self._txn = None
        self.epoch += 1
        self._pending = []
        self.checkpoint_at = 0.0
        fault("after_checkpoint")
        cast(WriteAheadFile, self.wal).rewind()

    def _recover(self) -> None:
        """Apply the batches a broker acked after its last checkpoint, then checkpoint."""
        with self.env.begin() as txn:
            raw = txn.get(WAL_EPOCH, db=self._meta)
        self.epoch = 0 if raw is None else int(_load(raw))
        wal = cast(WriteAheadFile, self.wal)
        while True:
            applied = 0
            try:
                with self.env.begin(write=True) as txn:
                    for payload in wal.records(self.epoch):
                        self._apply(txn, _load(payload))
                        applied += 1
                    txn.put(WAL_EPOCH, pack(self.epoch + 1), db=self._meta)
                break
            except lmdb.MapFullError:
                self._grow()
        self.epoch += 1
        wal.rewind()
        if applied:
            log.warning("%s: applied %d batch(es) from the write-ahead file (the broker had stopped "
                        "without a checkpoint)", self.path, applied)
        self.next_seq = self._load_next_seq()

    max_bytes = 0  # the configured cap (0: none but the disk); set by the server

    def _grow(self) -> None:
        size = self.env.info()["map_size"]
        limit = self.max_bytes or _MAX_MAP_BYTES
        if size >= limit:
            raise StorageFull(f"storage at {self.path} reached its max_size of {limit // (1024 * 1024)} MiB")
        with self._readers:
            self.growth_wanted = True  # background readers stop at their next check (a snapshot:
            try:                       # its next chunk) and start again after
                while self._background_readers:
                    self._readers.wait()
                self.env.set_mapsize(min(size * 2, limit))
            finally:
                self.growth_wanted = False
                self._readers.notify_all()

    @contextmanager
    def background_read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction for a thread other than the loop's. While it is open the map cannot
        grow: a long reader checks ``growth_wanted`` and ends early (the loop's commit waits)."""
        with self._readers:
            while self.growth_wanted:
                self._readers.wait()
            self.check_interrupted()
            self._background_readers += 1
        try:
            with self.env.begin(buffers=False) as txn:
                yield txn
        finally:
            with self._readers:
                self._background_readers -= 1
                self._readers.notify_all()

    def check_interrupted(self) -> None:
        """Raise ``ReadInterrupted`` if a background reader must end its transaction now."""
        if self.closing:
            raise ReadInterrupted("the broker is stopping")
        if self.growth_wanted:
            raise ReadInterrupted("the map is growing; read again after")

    def disk_room(self, used_bytes: int) -> int:
        """Bytes this store can still grow by on its disk: the filesystem's free space (as an
        unprivileged user sees it) plus the pages inside data.mdb that LMDB can reuse."""
        st = os.statvfs(self.path)
        try:
            slack = max(0, os.path.getsize(os.path.join(self.path, "data.mdb")) - used_bytes)
        except OSError:
            slack = 0
        return st.f_bavail * st.f_frsize + slack

    def used_bytes(self) -> int:
        """Bytes in live pages of every table (freed pages, reused by LMDB, are not counted)."""
        psize = self.env.stat()["psize"]
        pages = 0
        with self._reading() as txn:
            for db in (None, self._jobs, self._log, self._expiry, self._routes, self._counters, self._steps,
                       self._meta):
                st = txn.stat(db) if db is not None else self.env.stat()
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * psize

    def _ops(self, batch: Batch, wall_ms: int) -> tuple[list[list[Any]], int]:
        """A batch as the writes that store it, in the order they are applied; and the next seq."""
        seq = self.next_seq
        ops: list[list[Any]] = []
        add = ops.append
        packed: dict[int, bytes] = {}  # an enqueue's record is both the job and its log entry: pack once
        for job_id, record in batch.jobs.items():
            if record is None:
                add([_DELETE, _T_JOBS, job_id])
            else:  # a row (Job.to_row); a dict (replay's, a test's) is stored as the same row
                raw = packed[id(record)] = pack_record(record if type(record) is tuple else as_row(record))
                add([_PUT, _T_JOBS, job_id, raw])
        # [wall_ms, op, job_id, changes] as a msgpack array, built from packed parts: per op
        # name, the array's head, wall_ms, the op and a 16-byte id's header (bin 8 of length 16,
        # the bytes pack() gives) are one prefix, made once a pass
        head = _LOG_HEAD + pack(wall_ms)
        prefixes: dict[str, bytes] = {}
        u64 = _U64.pack
        for op, job_id, changes in batch.log:
            body = packed.get(id(changes)) or pack_record(changes)
            prefix = prefixes.get(op)
            if prefix is None:
                prefix = prefixes[op] = head + (_PACKED_OPS.get(op) or _pack_op(op)) + _BIN16
            if len(job_id) == 16:
                add([_APPEND, _T_LOG, u64(seq), prefix + job_id + body])
            else:
                add([_APPEND, _T_LOG, u64(seq), prefix[:-len(_BIN16)] + pack(job_id) + body])
            seq += 1
        for expire_ms, job_id in batch.expiry_del:
            add([_DELETE, _T_EXPIRY, _U64.pack(expire_ms) + job_id])
        for expire_ms, job_id in batch.expiry_add:
            add([_PUT, _T_EXPIRY, _U64.pack(expire_ms) + job_id, b""])
        for job_id in batch.drop_steps:
            add([_DROP_STEPS, job_id])
        for (job_id, name), step in batch.steps.items():
            add([_PUT, _T_STEPS, job_id + name.encode(), pack(step)])
        for name, route in batch.routes.items():
            add([_PUT, _T_ROUTES, name.encode(), pack(route)])
        for group, counts in batch.counters.items():
            add([_PUT, _T_COUNTERS, group.encode(), pack(counts)])
        for name, tick_ms in batch.cron.items():
            add([_PUT, _T_META, CRON_PREFIX + name.encode(), pack(tick_ms)])
        if batch.trim_log_to:
            add([_TRIM, batch.trim_log_to, self.TRIM_WITH_WORK if batch.log else self.TRIM_PER_COMMIT])
        return ops, seq

    def _apply(self, txn: lmdb.Transaction, ops: list[list[Any]]) -> None:
        """Do a batch's writes in ``txn``: the same for a live batch and one read back from the file.

        A run of appends to one table (a pass's log entries, in seq order) is one ``putmulti``:
        one call into LMDB for the run instead of one per entry (0.72 -> 0.37 us an entry)."""
        dbs = self._dbs
        i, count = 0, len(ops)
        while i < count:
            op = ops[i]
            i += 1
            code = op[0]
            if code == _PUT:
                txn.put(op[2], op[3], db=dbs[op[1]])
            elif code == _APPEND:
                run = [(op[2], op[3])]
                table = op[1]
                while i < count and ops[i][0] == _APPEND and ops[i][1] == table:
                    run.append((ops[i][2], ops[i][3]))
                    i += 1
                txn.cursor(db=dbs[table]).putmulti(run, append=True)  # as put(append=True) did, one by one
            elif code == _DELETE:
                txn.delete(op[2], db=dbs[op[1]])
            elif code == _DROP_STEPS:
                self._delete_steps(txn, op[1])
            else:
                self._trim_log(txn, op[1], op[2])

    def cron_last_fired(self) -> dict[str, int]:
        """Each cron entry's last fired tick (ms), kept in ``meta`` under ``cron:<name>``."""
        out: dict[str, int] = {}
        with self._reading() as txn:
            cur = txn.cursor(db=self._meta)
            if cur.set_range(CRON_PREFIX):
                for key, raw in cur:
                    if not bytes(key).startswith(CRON_PREFIX):
                        break
                    out[bytes(key[len(CRON_PREFIX):]).decode()] = _load(raw)
        return out

    # Log entries dropped per commit: bounded, so trimming a long log never stalls one pass (or
    # its acks). A commit with other work carries a few; a trim-only commit (the loop runs one
    # at most every TRIM_GAP_S, see server.py) carries more.
    TRIM_PER_COMMIT = 1_000
    TRIM_WITH_WORK = 200

    def _trim_log(self, txn: lmdb.Transaction, upto_seq: int, most: int) -> None:
        cur = txn.cursor(db=self._log)
        limit = _U64.pack(upto_seq)
        deleted = 0
        if cur.first():
            while deleted < most and cur.key() and bytes(cur.key()) <= limit:
                if not cur.delete():
                    break
                deleted += 1
        base = _load(bytes(txn.get(LOG_BASE, pack(0), db=self._meta)))
        if upto_seq > base:
            txn.put(LOG_BASE, pack(upto_seq), db=self._meta)

    def sizes(self) -> dict[str, Any]:
        """What ``shoal storage`` shows: file, map and live sizes, entries per table, snapshots."""
        out: dict[str, Any] = {"path": self.path, "used_bytes": self.used_bytes(),
                               "map_bytes": self.env.info()["map_size"], "max_bytes": self.max_bytes}
        try:
            out["file_bytes"] = os.path.getsize(os.path.join(self.path, "data.mdb"))
        except OSError:
            out["file_bytes"] = 0
        with self._reading() as txn:
            out["entries"] = {name: txn.stat(getattr(self, f"_{name}"))["entries"] for name in _TABLES}
        out["log_first_seq"], out["log_last_seq"] = self.log_first_seq(), self.last_seq()
        snaps = []
        directory = os.path.join(self.path, "snapshots")
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
            if name.startswith("snap-"):
                path = os.path.join(directory, name)
                size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                snaps.append({"name": name, "seq": int(name[len("snap-"):]), "bytes": size})
        out["snapshots"] = snaps
        wal = self.wal
        out["wal"] = {"bytes": wal.size if wal else 0, "used_bytes": wal.pos if wal else 0,
                      "batches": len(self._pending), "write_ahead": self.write_ahead}
        return out

    def log_first_seq(self) -> int:
        """The oldest seq still in the log (0 when it is empty)."""
        with self._reading() as txn:
            cur = txn.cursor(db=self._log)
            return int(_U64.unpack(cur.key())[0]) if cur.first() else 0

    def take_snapshot(self, directory: str, recycle: str | None = None) -> tuple[str, int]:
        """Copy the whole environment, consistently (one read transaction, compacted), into a new
        ``snap-<seq>`` directory under ``directory``; returns its path and the log seq it holds.

        ``recycle`` names an old snapshot directory that is being dropped anyway: its file is
        written over instead of new blocks being allocated and its old ones freed. On ext4
        (with ``discard`` above all) allocating ~100 MiB and then freeing it stalls the journal
        commit that every broker fdatasync waits for, by tens of ms; overwriting blocks the
        file already owns, synced 256 KiB at a time, does not (BENCHMARKS.md, "Snapshot stalls").
        The old directory is renamed to the partial name first, so a crash mid-copy leaves a
        ``.snap-partial-*`` that start-up removes, never a damaged ``snap-*``.

        Runs fine in a background thread: LMDB copies without blocking writers, and py-lmdb
        releases the GIL while it does.
        """
        if threading.get_ident() == self._owner:
            self.checkpoint()  # called from the loop's thread (the server checkpoints before its thread)
        os.makedirs(directory, exist_ok=True)
        building = tempfile.mkdtemp(prefix=".snap-partial-", dir=directory)
        try:
            target = os.path.join(building, "data.mdb")
            if recycle is not None and not os.path.isfile(os.path.join(recycle, "data.mdb")):
                recycle = None
            if recycle is not None:
                os.rmdir(building)
                os.rename(recycle, building)  # from here on it is a partial, never a snapshot
                for name in os.listdir(building):
                    if name != "data.mdb":
                        os.unlink(os.path.join(building, name))
                _fsync_path(directory)  # durable before a byte of it is overwritten
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                with self.background_read() as txn:  # the copy's read transaction: its seq names it
                    seq = self._last_seq_in(txn)
                    self._copy_into(fd, txn, recycled=recycle is not None)
            finally:
                os.close(fd)
            if recycle is None:
                _fsync_path(building)  # the new file's entry in its directory
            final = os.path.join(directory, f"snap-{seq:016d}")
            if os.path.exists(final):
                shutil.rmtree(building)
            else:
                os.rename(building, final)
                _fsync_path(directory)  # the rename itself is durable before any log is trimmed
            return final, seq
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise

    def _copy_into(self, fd: int, txn: lmdb.Transaction, recycled: bool, chunk: int = SNAPSHOT_SYNC_BYTES) -> None:
        """A compacted copy of the environment written over ``fd`` from offset 0, synced every
        ``chunk`` bytes (so dirty pages never pile up into one long flush), then cut to length
        and synced. LMDB writes the copy into a pipe from a helper thread (``copyfd`` releases
        the GIL); this thread writes it out."""
        read_end, write_end = os.pipe()
        try:
            fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), chunk)
        except OSError:
            pass  # a smaller pipe only means more, smaller reads
        failure: list[BaseException] = []

        def produce() -> None:
            try:
                self.env.copyfd(write_end, compact=True, txn=txn)
            except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
                failure.append(exc)
            finally:
                os.close(write_end)

        producer = threading.Thread(target=produce, name="shoal-snapshot-copy", daemon=True)
        producer.start()
        offset = 0
        unsynced = 0
        owned = os.fstat(fd).st_size  # blocks the file already has (a recycled snapshot's)
        growing_since: float | None = None
        try:
            while True:
                data = os.read(read_end, chunk)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, offset)
                    offset += written
                    unsynced += written
                    view = view[written:]
                self.check_interrupted()  # the loop waits to grow the map until this read ends
                if recycled and offset == len(data):  # the old file is damaged from here on
                    os.fdatasync(fd)
                    fault("snapshot_overwriting")
                if unsynced >= chunk:
                    os.fdatasync(fd)
                    unsynced = 0
                    if offset > owned:  # new blocks: paced (see SNAPSHOT_NEW_BYTES_PER_S)
                        if growing_since is None:
                            growing_since = time.monotonic()
                        ahead = (offset - owned) / SNAPSHOT_NEW_BYTES_PER_S - (time.monotonic() - growing_since)
                        if ahead > 0:
                            time.sleep(ahead)
        finally:
            os.close(read_end)  # a writer still copying gets EPIPE and stops
            producer.join()
        if failure:
            raise failure[0]
        size = os.fstat(fd).st_size
        while size > offset:  # a recycled file may have been longer: freed a step and a sync at a
            size = max(offset, size - chunk * 8)  # time, paced, so no journal commit frees much
            os.ftruncate(fd, size)
            os.fdatasync(fd)
            time.sleep(chunk * 8 / SNAPSHOT_NEW_BYTES_PER_S)
        os.fdatasync(fd)  # data and size; the mtime is not worth a journal commit

    def last_seq(self) -> int:
        """The seq of the newest log entry, or the trim point when the log is empty."""
        with self._reading() as txn:
            return self._last_seq_in(txn)

    def _last_seq_in(self, txn: lmdb.Transaction) -> int:
        cur = txn.cursor(db=self._log)
        if cur.last():
            return int(_U64.unpack(cur.key())[0])
        raw = txn.get(LOG_BASE, db=self._meta)
        return 0 if raw is None else int(_load(bytes(raw)))

    def _delete_steps(self, txn: lmdb.Transaction, job_id: bytes) -> None:
        cur = txn.cursor(db=self._steps)
        if cur.set_range(job_id):
            while cur.key()[:16] == job_id:
                if not cur.delete():
                    break

    def close(self) -> None:
        """Stop background readers, close the environment and give up the broker lock."""
        self.closing = True
        with self._readers:  # LMDB frees what their transactions point into
            if not self._readers.wait_for(lambda: not self._background_readers, timeout=10.0):
                raise ShoalError(f"a background read of {self.path} did not stop; not closing under it")
        try:
            if self._txn is not None and threading.get_ident() != self._owner:
                # LMDB's write transaction is its thread's: not committed from here. The file
                # keeps its batches and the next open applies them.
                log.error("%s: closed from a thread other than the loop's; the write-ahead file "
                          "keeps the last batches", self.path)
                self._txn = None
            if self._txn is not None:
                try:
                    self.checkpoint()
                except StorageFull as exc:  # the acked batches stay in the file: the next open applies them
                    log.error("%s: the last checkpoint failed (%s); the write-ahead file keeps its batches",
                              self.path, exc)
                    if self._txn is not None:
                        self._txn.abort()
                        self._txn = None
            if self.wal is not None:
                self.wal.close()
                self.wal = None
            self.env.close()
        finally:
            if self.lock is not None:
                self.lock.release()


def _raise_if_full(exc: lmdb.Error, path: str) -> None:
    if "space" in str(exc).lower() or "quota" in str(exc).lower():
        raise StorageFull(f"the disk under {path} is full: {exc}") from None


def _recover_if_stopped(path: str) -> None:
    """Before ``broker replay`` reads a directory: a broker killed between checkpoints left its
    last acked batches only in the write-ahead file. With no broker running there (its lock
    is free), they are applied now, as that broker's next start would. Beside a live broker
    the reader sees its last checkpoint (at most ``Store.CHECKPOINT_S`` old)."""
    if not (os.path.isfile(os.path.join(path, "wal")) and os.path.isfile(os.path.join(path, "data.mdb"))):
        return
    if not _wal_pending(path):
        return  # a broker that stopped cleanly (or a snapshot's copy): nothing to apply, nothing written
    try:
        Store(path).close()
    except DataDirInUse:
        return
    except (OSError, lmdb.Error) as exc:  # not ours to write (a read-only copy): read it as it is
        log.warning("%s: could not apply its write-ahead file (%s); reading its last checkpoint", path, exc)


def _wal_pending(path: str) -> bool:
    """Whether ``DIR/wal`` starts with a whole record of the epoch LMDB holds (read without the lock)."""
    try:
        env = lmdb.open(path, readonly=True, create=False, max_dbs=16, lock=True)
    except lmdb.Error:
        return False  # not an environment: _open_readonly says so
    try:
        with env.begin() as txn:
            raw = txn.get(WAL_EPOCH, db=env.open_db(b"meta", txn=txn, create=False))
        epoch = 0 if raw is None else int(_load(bytes(raw)))
    except lmdb.Error:
        return False
    finally:
        env.close()
    wal = WriteAheadFile(os.path.join(path, "wal"), create=False)
    try:
        return next(iter(wal.records(epoch)), None) is not None
    finally:
        wal.close()


def _unpack_entry(raw: bytes) -> Any:
    # our own data, written by the broker: no peer-facing size limit applies
    return _load(raw)
