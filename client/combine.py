"""Concurrent ``Client`` enqueues from many threads leave as one ENQUEUE (flat combining).

The thread that finds fewer than ``MAX_LEADERS`` rounds in flight leads. It sends its own jobs,
and those of every thread queued at that moment, as one ENQUEUE on its own socket; it cuts the
reply back per caller, and returns. A round that ends as the last one in flight hands the lead
to the first thread that queued meanwhile; one that ends beside another round leaves the queue
to whoever comes next (that round's end, or a caller arriving), so the queue is not sent by
itself at once, a round of one or two, while the threads just answered are about to queue
again (16 threads on one client: ahead in 82 of 120 alternated runs, +2 to +14% in the
medians; BENCHMARKS.md, "16 threads on one client: no hand-off beside another round").
So a lone caller is its own leader and sends at once, with no hand-off, and the sequential
path is what it was (1,360 and 1,377 jobs/s, alternated). Sixteen threads sharing a
``Client`` make a few requests of many jobs each, and the broker admits and commits those on
its bulk path (BENCHMARKS.md, "The write-ahead file": "16 threads on one Client: flat
combining").

The answers are the same as the async client's (``coalesce.py``). ENQUEUE is all or nothing,
so if the broker refuses the merged request nothing was stored, and each caller sends its
own jobs again, alone, from its own thread. If the broker does not answer, every caller
raises ``BrokerUnreachable`` with its own ids.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from shoal.errors import BrokerUnreachable, ShoalError

from .coalesce import MAX_ITEMS, goes_alone, payload_bytes, split_reply

Send = Callable[[dict[str, Any]], dict[str, Any]]
MAX_LEADERS = 2  # rounds in flight at once (1 to 4 measured alike with 16 threads: the client's GIL is the limit)


class _Turn:
    """One caller's jobs, and what became of them."""

    __slots__ = ("items", "event", "reply", "error", "lead", "alone")

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.event: threading.Event | None = None  # a waiting caller's (a leader needs none)
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.lead = False   # handed the lead: send the queue's next round
        self.alone = False  # the merged request was refused: send these jobs alone

    def outcome(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def _waiting(turn: _Turn) -> bool:
    """A caller waiting to be taken into a round (not a leader, nor handed the lead)."""
    return turn.event is not None and not turn.lead


class Combiner:
    """``send`` makes one ENQUEUE request on the calling thread's socket."""

    def __init__(self, send: Send, max_message_bytes: int) -> None:
        self._send = send
        self._max_bytes = max_message_bytes // 2
        self._lock = threading.Lock()
        self._queue: list[_Turn] = []
        self._leaders = 0  # threads in a round; at MAX_LEADERS, anyone arriving queues behind them

    def alone(self, items: list[dict[str, Any]]) -> bool:
        """Whether ``enqueue`` would send these on their own."""
        return goes_alone(len(items), payload_bytes(items), self._max_bytes)

    def enqueue(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The ENQUEUE reply for ``items`` (their part of it, when merged with others)."""
        if self.alone(items):
            return self._send({"jobs": items})  # big enough on its own
        turn = _Turn(items)
        with self._lock:
            if self._leaders >= MAX_LEADERS:
                turn.event = threading.Event()
            else:
                self._leaders += 1
            self._queue.append(turn)
        if turn.event is not None:
            try:
                turn.event.wait()  # a leader answers every turn it takes, or hands this one the lead
            except BaseException:  # interrupted (Ctrl-C in the main thread): leave no one waiting on us
                self._withdraw(turn)
                raise
            if not turn.lead:
                return self._send({"jobs": items}) if turn.alone else turn.outcome()
        self._lead(turn)
        return self._send({"jobs": items}) if turn.alone else turn.outcome()

    def _lead(self, own: _Turn) -> None:
        """One round: this thread's turn and the waiting ones queued after it (never another
        leader's), sent together and answered; then the lead is handed on, or not (``_hand_on``)."""
        with self._lock:
            self._queue.remove(own)
            batch, kept = [own], []
            count, size = len(own.items), payload_bytes(own.items)
            for turn in self._queue:
                more = payload_bytes(turn.items)
                if _waiting(turn) and count + len(turn.items) <= MAX_ITEMS and size + more <= self._max_bytes:
                    batch.append(turn)
                    count, size = count + len(turn.items), size + more
                else:
                    kept.append(turn)  # a leader about to take its own round, or past a cap (as coalesce.py's)
            self._queue = kept
        try:
            self._round(batch)
        finally:
            for turn in batch:
                if turn.reply is None and turn.error is None:
                    turn.alone = True  # interrupted before an answer: each tries on its own
            with self._lock:
                self._hand_on()
            for turn in batch[1:]:
                assert turn.event is not None
                turn.event.set()

    def _hand_on(self) -> None:
        """(Holding the lock.) This round is over. The last round in flight hands the lead to the
        queue's head; beside another round, or with no one waiting, there is one leader fewer,
        and the queue waits for that round's end or the next caller, whichever comes first."""
        head = next((turn for turn in self._queue if _waiting(turn)), None)
        if head is None or self._leaders > 1:
            self._leaders -= 1
        else:
            head.lead = True
            assert head.event is not None
            head.event.set()

    def _withdraw(self, turn: _Turn) -> None:
        """A waiting caller gives up: still queued, its jobs were never sent and leave the queue;
        handed the lead meanwhile, it passes the lead on. (Taken into a round already, its jobs
        are sent and nobody waits for it.)"""
        with self._lock:
            if turn in self._queue:
                self._queue.remove(turn)
                if turn.lead:  # handed the lead as the interruption came: someone else takes it
                    self._hand_on()

    def _round(self, batch: list[_Turn]) -> None:
        if len(batch) == 1:
            try:
                batch[0].reply = self._send({"jobs": batch[0].items})
            except Exception as exc:  # noqa: BLE001 - the caller's own error, raised in its thread
                batch[0].error = exc
            return
        try:
            reply = self._send({"jobs": [item for turn in batch for item in turn.items]})
        except BrokerUnreachable as exc:
            for turn in batch:
                turn.error = exc
            return
        except ShoalError:  # refused as a whole: nothing was stored; each asks alone (``alone``)
            return
        except Exception as exc:  # noqa: BLE001 - a closed client: everyone's
            for turn in batch:
                turn.error = exc
            return
        for turn, part in zip(batch, split_reply(reply, [len(turn.items) for turn in batch])):
            turn.reply = part
