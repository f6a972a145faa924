"""``broker replay``: rebuild a data directory's state from its log alone.

    broker replay --data DIR --out NEWDIR [--until SEQ|TIME]   a fresh directory a broker can start on
    broker replay --data DIR --verify                          compare with DIR's own tables

DIR is opened read-only and without the broker lock, so both work beside a live
broker (they read one consistent snapshot). NEWDIR is built under a temporary name
next to it and renamed into place only when complete; an existing non-empty NEWDIR is
never touched. Exit codes: 0 done (and equal, for --verify), 1 --verify found
differences, 2 refused (usage, not a data dir, newer schema, damaged log, NEWDIR not empty).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator, TextIO

from shoal.errors import ConfigError, ShoalError

from .rebuild import ReplayError, State, apply_entry, decode_stored
from .snapshot import Snapshot
from .replay_out import NewDirJobs, the_rest
from ..storage.store import LOG_BASE, Store
from .verify import differences, stored_state

EXIT_OK, EXIT_DIFFERENT, EXIT_REFUSED = 0, 1, 2
PROGRESS_EVERY = 100_000
# --out writes NEWDIR's jobs this many per transaction (LMDB keeps a transaction's pages in
# memory until it commits)
JOBS_PER_COMMIT = 10_000
_SECONDS_FROM = 1_000_000_000  # a bare integer this large is a Unix time (2001 on), smaller ones are seqs
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Until:
    """Where a point-in-time replay stops: after log entry ``seq``, or after wall time ``wall_ms``."""

    seq: int | None = None
    wall_ms: int | None = None

    def __str__(self) -> str:
        if self.seq is not None:
            return f"seq {self.seq}"
        assert self.wall_ms is not None
        return _utc(self.wall_ms)


def parse_until(text: str) -> Until:
    """``SEQ`` or ``TIME``: ``123`` / ``seq:123`` is a log position; ``@1714557600``, a bare
    integer from 1,000,000,000 up, or ``1714557600.5`` is Unix seconds; anything else ISO-8601
    (``2024-05-01T12:00:00Z``; without a zone it is read as UTC, like every time Shoal prints)."""
    value = text.strip()
    try:
        if value.startswith("seq:"):
            return Until(seq=int(value[4:]))
        if value.startswith("@"):
            return Until(wall_ms=int(float(value[1:]) * 1000))
        if re.fullmatch(r"\d+", value):
            n = int(value)
            return Until(seq=n) if n < _SECONDS_FROM else Until(wall_ms=n * 1000)
        if re.fullmatch(r"\d+\.\d*", value):
            return Until(wall_ms=int(float(value) * 1000))
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" and value else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a log seq (123), Unix seconds (@1714557600) or an ISO-8601 time "
            f"(2024-05-01T12:00:00Z), found {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return Until(wall_ms=(moment - _EPOCH) // timedelta(milliseconds=1))


def build_parser() -> argparse.ArgumentParser:
    """The ``broker replay`` flags."""
    parser = argparse.ArgumentParser(prog="broker replay",
                                     description="Rebuild a Shoal data directory's state from its log alone.")
    parser.add_argument("--data", help="the data directory to read (default: SHOAL_DATA, else the config's, else ./.shoal)")
    parser.add_argument("--config", help="path to shoal.toml (default ./shoal.toml, or SHOAL_CONFIG)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="NEWDIR", help="write the rebuilt state (and the log) into this new directory")
    mode.add_argument("--verify", action="store_true",
                      help="rebuild in memory and compare with the directory's tables; exit 1 on any difference")
    parser.add_argument("--until", type=parse_until, metavar="SEQ|TIME",
                        help="with --out: the state as of this point (point-in-time recovery): a log seq (123), "
                             "Unix seconds (@1714557600) or an ISO-8601 time (2024-05-01T12:00:00Z; UTC without a zone)")
    parser.add_argument("--progress-every", type=int, default=PROGRESS_EVERY, metavar="N",
                        help=f"report progress on stderr every N log entries (default {PROGRESS_EVERY:,})")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``broker replay``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_REFUSED
    if args.until is not None and args.verify:
        print("broker replay: --until goes with --out (a past state cannot equal today's tables)", file=sys.stderr)
        return EXIT_REFUSED
    try:
        data = args.data or _configured_data(args.config)
        if args.out is not None:
            _check_out(args.out)
        source = Store(data, readonly=True)
        try:
            with source.snapshot() as snapshot:
                if args.verify:
                    return _verify(snapshot, data, args.progress_every)
                return _write_out(snapshot, data, args.out, args.until, args.progress_every)
        finally:
            source.close()
    except ShoalError as exc:
        print(f"broker replay: {exc}", file=sys.stderr)
        return EXIT_REFUSED


# --- rebuilding --------------------------------------------------------------------------
class Progress:
    """Entries per second on stderr every ``every`` entries, so a long replay is visibly alive."""

    def __init__(self, every: int, total: int, out: TextIO = sys.stderr) -> None:
        self.every, self.total, self.out = max(1, every), total, out
        self.started = time.monotonic()

    def rate(self, done: int) -> float:
        """Entries per second so far."""
        return done / max(time.monotonic() - self.started, 1e-6)

    def tick(self, done: int, seq: int) -> None:
        """One more entry applied; a line every ``every``."""
        if done % self.every == 0:
            print(f"replay: {done:,} entries applied (seq {seq:,} of {self.total:,}), "
                  f"{self.rate(done):,.0f} entries/s", file=self.out, flush=True)


def rebuild(snapshot: Snapshot, stop_seq: int, progress: Progress, state: State, base_seq: int = 0) -> State:
    """Apply the log through ``stop_seq`` to ``state``, from its first entry or after
    ``base_seq`` (``state`` then holds a snapshot's tables, see ``snapshot_base``);
    ``ReplayError`` on a gap or a bad entry."""
    for seq, entry in _entries(snapshot, stop_seq, base_seq):
        apply_entry(state, seq, entry)
        progress.tick(state.applied, seq)
    return state


def _entries(snapshot: Snapshot, stop_seq: int, base_seq: int = 0) -> Iterator[tuple[int, Any]]:
    expected = base_seq + 1
    for seq, raw in snapshot.log(expected):
        if seq > stop_seq:
            return
        if seq != expected:
            raise ReplayError(f"the log is missing entries {expected}..{seq - 1}: it is damaged "
                              f"(or was compacted behind a snapshot that is gone)")
        expected += 1
        yield seq, _decode(seq, raw)


def snapshot_base(data: str, stop_seq: int, state: State) -> tuple[int, str] | None:
    """Load the newest snapshot under ``data/snapshots`` at or before ``stop_seq`` into
    ``state``, a starting point; its seq and path, or None when there is none."""
    directory = os.path.join(data, "snapshots")
    try:
        names = sorted((d for d in os.listdir(directory) if d.startswith("snap-")), reverse=True)
    except FileNotFoundError:
        return None
    for name in names:
        seq = int(name[len("snap-"):])
        if seq > stop_seq:
            continue
        path = os.path.join(directory, name)
        snap_store = Store(path, readonly=True)
        try:
            with snap_store.snapshot() as snap:
                stored_state(snap, state)
        finally:
            snap_store.close()
        state.last_seq = seq
        print(f"replay: starting from the snapshot at seq {seq:,} ({path})", file=sys.stderr)
        return seq, path
    return None


def _base(data: str, snapshot: Snapshot, stop_seq: int, state: State) -> tuple[int, str | None]:
    """Where a replay through ``stop_seq`` starts: the log's beginning when it still has seq 1,
    else the newest snapshot before the stop (a compacted log has dropped what that holds),
    loaded into ``state``. Its seq (0: the beginning) and its path."""
    first, _ = snapshot.log_bounds()
    if first == 1:
        return 0, None
    found = snapshot_base(data, stop_seq, state)
    return found if found is not None else (0, None)  # none: the replay reports the entries missing


def stop_seq_for(snapshot: Snapshot, until: Until | None) -> int:
    """The last seq to apply. Entries of one commit share its wall time; a stop inside a
    commit moves back to the end of the previous one, so the state is one that existed and
    nothing after the asked point is in it."""
    first, last = snapshot.log_bounds()
    if until is None or not last:
        return max(last, _log_base(snapshot))  # a log trimmed to empty: everything is in the snapshot
    if until.wall_ms is not None:
        stop = 0
        for seq, raw in snapshot.log():
            if _decode(seq, raw)[0] > until.wall_ms:
                break
            stop = seq
        return stop
    assert until.seq is not None
    if until.seq >= last:
        return last
    if until.seq < first:
        return 0
    following = next(snapshot.log(until.seq + 1), None)
    wall_ms = _decode(until.seq, next(snapshot.log(until.seq))[1])[0]
    if following is None or _decode(*following)[0] != wall_ms:
        return until.seq
    for seq, raw in snapshot.log_backward(until.seq):
        if _decode(seq, raw)[0] != wall_ms:
            return seq
    return 0


def _log_base(snapshot: Snapshot) -> int:
    """The seq the log was trimmed to (0: never trimmed)."""
    for key, raw in snapshot.items("meta"):
        if bytes(key) == LOG_BASE:
            return int(decode_stored(raw))
    return 0


def _decode(seq: int, raw: bytes) -> Any:
    try:
        return decode_stored(raw)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ReplayError(f"log entry {seq} does not decode ({exc}): the log is damaged") from None


# --- the two modes -------------------------------------------------------------------------
def _verify(snapshot: Snapshot, data: str, progress_every: int) -> int:
    started = time.monotonic()
    last = max(snapshot.log_bounds()[1], _log_base(snapshot))
    rebuilt = State()
    base_seq, _ = _base(data, snapshot, last, rebuilt)
    rebuild(snapshot, last, Progress(progress_every, last), rebuilt, base_seq)
    found = 0
    for difference in differences(rebuilt, snapshot):
        found += 1
        print(difference)
    if found:
        print(f"verify: {found} difference{'s' if found != 1 else ''} between the log "
              f"({rebuilt.applied:,} entries) and the tables of {data}", file=sys.stderr)
        return EXIT_DIFFERENT
    print(f"verify: {data} is exactly what its log rebuilds: {rebuilt.applied:,} entries, "
          f"{rebuilt.job_count():,} jobs, {rebuilt.step_count():,} steps, {len(rebuilt.routes):,} routes, "
          f"{len(rebuilt.counters):,} counter groups, {len(rebuilt.cron):,} cron marks, "
          f"{len(rebuilt.expiry()):,} expiry entries ({_elapsed(started, rebuilt.applied)})")
    return EXIT_OK


def _write_out(snapshot: Snapshot, data: str, out: str, until: Until | None, progress_every: int) -> int:
    started = time.monotonic()
    stop = stop_seq_for(snapshot, until)
    if until is not None:
        print(f"replay: stopping at seq {stop:,} ({until} asked)", file=sys.stderr)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    # built under a temporary name and renamed when complete: a failed replay leaves no half directory
    building = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out)) + ".partial-", dir=parent)
    try:
        target = Store(building, write_ahead=False)  # renamed into place only when complete
        try:
            final = NewDirJobs(target, JOBS_PER_COMMIT)
            state = State(final=final)
            base_seq, base_path = _base(data, snapshot, stop, state)
            rebuild(snapshot, stop, Progress(progress_every, stop), state, base_seq)
            final.flush()
            target.copy_log((seq, raw) for seq, raw in snapshot.log(base_seq + 1) if seq <= stop)
            if base_path is not None:  # the new directory's log starts after it: keep the snapshot too
                shutil.copytree(base_path, os.path.join(building, "snapshots", os.path.basename(base_path)))
            for batch in the_rest(state, JOBS_PER_COMMIT):
                target.commit(batch, wall_ms=0)  # no log entries in it: wall_ms is unused
        finally:
            target.close()
        _check_out(out)  # again: someone may have filled it meanwhile
        os.rename(building, out)  # onto a missing or empty directory: atomic
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    _fsync_dir(parent)
    print(f"replay: rebuilt {state.job_count():,} jobs, {state.step_count():,} steps and {len(state.routes):,} routes "
          f"from {state.applied:,} log entries of {data} into {out} ({_elapsed(started, state.applied)})")
    return EXIT_OK


# --- small helpers -------------------------------------------------------------------------
def _check_out(out: str) -> None:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ShoalError(f"{out} already exists and is not an empty directory; replay never overwrites, "
                         f"give a new --out")


def _configured_data(config: str | None) -> str:
    from shoal.conf import load_settings

    try:
        return str(load_settings(config, env=os.environ).broker.data)
    except ConfigError as exc:
        raise ShoalError(str(exc)) from None


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself must survive a power loss
    finally:
        os.close(fd)


def _elapsed(started: float, entries: int) -> str:
    seconds = max(time.monotonic() - started, 1e-6)
    return f"{seconds:.2f}s, {entries / seconds:,.0f} entries/s"


def _utc(wall_ms: int) -> str:
    moment = datetime.fromtimestamp(wall_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{wall_ms % 1000:03d} UTC"
