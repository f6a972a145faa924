"""The broker loop's spin before it sleeps: ``spin_poll`` and ``IdleSpin`` on an injected clock
and a scripted poll, and a broker with ``[broker] spin = 0`` (it sleeps in poll at once)
serving the same as the default."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.broker.shell.server import IdleSpin, spin_poll

from conftest import DEFAULT_TOML

MSG = [("sock", 1)]  # what a poll returns when a message waits on the broker's socket


class Scripted:
    """A poll and a clock for the loop: a message arrives at each time in ``arrivals`` (seconds
    after the start); the clock moves 0.1 ms a read; a sleeping poll (timeout > 0) moves it to
    the next arrival, or by its whole timeout when none comes within it."""

    def __init__(self, arrivals: list[float]) -> None:
        self.start = self.now = 100.0
        self.arrivals = [self.start + t for t in arrivals]
        self.timeouts: list[int] = []
        self.yields = 0

    def poll(self, timeout_ms: int) -> list[Any]:
        self.timeouts.append(timeout_ms)
        if timeout_ms and not (self.arrivals and self.arrivals[0] <= self.now):
            due = self.now + timeout_ms / 1000
            self.now = min(due, self.arrivals[0]) if self.arrivals else due
        if self.arrivals and self.arrivals[0] <= self.now:
            self.arrivals.pop(0)
            return list(MSG)
        return []

    def clock(self) -> float:
        self.now += 0.0001
        return self.now

    def give_way(self) -> None:
        self.yields += 1


def spun(script: Scripted, spin_s: float) -> Callable[[], list[Any]]:
    return lambda: spin_poll(script.poll, spin_s, script.clock, script.give_way)


def test_what_is_ready_at_the_first_poll_is_returned_at_once() -> None:
    script = Scripted([0.0])
    assert spun(script, 0.0005)() == MSG
    assert script.timeouts == [0] and script.yields == 0  # never a sleeping poll


def test_it_polls_without_sleeping_and_gives_way_between_polls_until_something_comes() -> None:
    script = Scripted([0.00025])  # clock reads at 0.1, 0.2, 0.3 ms: the third poll finds it
    assert spun(script, 0.0005)() == MSG
    assert script.timeouts == [0, 0, 0] and script.yields == 2


def test_it_gives_up_with_nothing_once_the_spin_is_over() -> None:
    script = Scripted([])
    assert spun(script, 0.0005)() == []
    # the clock moves 0.1 ms a read: about five polls fit in 0.5 ms, then the caller sleeps
    assert 3 <= len(script.timeouts) <= 6 and set(script.timeouts) == {0}
    assert script.yields == len(script.timeouts) - 1


def test_a_spin_of_zero_still_polls_once() -> None:
    script = Scripted([])
    assert spun(script, 0.0)() == [] and script.timeouts == [0]


def idle(script: Scripted, spin_s: float = 0.0005) -> IdleSpin:
    return IdleSpin(spin_s, script.clock, script.give_way)


def test_a_first_wait_sleeps_at_once_and_a_message_soon_after_arms_the_spin() -> None:
    script = Scripted([0.0002])  # the next request 0.2 ms after the pass
    spin = idle(script)
    assert spin.wait(script.poll, 1000) == MSG
    assert script.timeouts == [1000] and spin.armed


def test_an_armed_wait_spins_and_reads_the_message_without_sleeping() -> None:
    script = Scripted([0.00035])
    spin = idle(script)
    spin.armed = True
    assert spin.wait(script.poll, 1000) == MSG
    assert script.timeouts == [0, 0, 0] and script.yields == 2 and spin.armed


def test_a_message_later_than_the_spin_disarms_it_so_paced_callers_cost_no_spin() -> None:
    script = Scripted([0.0008, 0.0018])  # a request every millisecond
    spin = idle(script)
    spin.armed = True
    assert spin.wait(script.poll, 1000) == MSG  # spun its 0.5 ms, then slept until the message
    assert script.timeouts[-1] == 1000 and set(script.timeouts[:-1]) == {0} and len(script.timeouts) > 2
    assert not spin.armed
    polls = len(script.timeouts)
    assert spin.wait(script.poll, 1000) == MSG  # the next paced request: slept at once
    assert script.timeouts[polls:] == [1000] and not spin.armed


def test_a_wait_ended_by_its_timer_disarms_the_spin() -> None:
    script = Scripted([])
    spin = idle(script)
    spin.armed = True
    assert spin.wait(script.poll, 3) == []
    assert not spin.armed


def test_a_zero_timeout_looks_once_and_leaves_the_spin_as_it_was() -> None:
    script = Scripted([])
    spin = idle(script)
    spin.armed = True
    assert spin.wait(script.poll, 0) == [] and script.timeouts == [0] and spin.armed


def test_spin_zero_never_arms() -> None:
    script = Scripted([0.0001, 0.0002])
    spin = idle(script, spin_s=0.0)
    assert spin.wait(script.poll, 1000) == MSG and not spin.armed
    assert spin.wait(script.poll, 1000) == MSG and script.timeouts == [1000, 1000]


def test_a_broker_that_never_spins_serves_the_same(cluster_factory) -> None:
    """``spin = 0``: after every pass the loop sleeps in poll at once; enqueue, dispatch, wait,
    and a burst from threads sharing a client all work as with the default."""
    cluster = cluster_factory(DEFAULT_TOML.replace("[broker]\n", "[broker]\nspin = 0\n"))
    cluster.start_broker()
    cluster.start_worker("email", 4)
    client = cluster.client()
    ids = [client.enqueue("echo", {"n": n}, group="email") for n in range(30)]
    assert [client.wait(i, timeout=30).value["payload"] for i in ids] == [{"n": n} for n in range(30)]
    many = client.enqueue_many("echo", [{"n": n} for n in range(200)], group="email")
    assert all(client.wait(i, timeout=30).status == "completed" for i in many)
    cluster.stop_and_verify()


# --- a pass nobody waits on waits for company ---------------------------------------------
def answered_every(spin: IdleSpin, script: Scripted, gap_s: float) -> None:
    """Two passes that sent something, ``gap_s`` apart (the clock's own reads add 0.1 ms each)."""
    spin.answered()
    script.now += gap_s - 0.0001
    spin.answered()


def test_a_pass_nobody_waits_on_takes_the_request_due_within_the_spin() -> None:
    script = Scripted([0.0011])  # a sequential producer's next request, 1.1 ms after the start
    spin = idle(script)
    answered_every(spin, script, 0.0006)  # acks every 0.6 ms, the last at 0.7 ms
    script.now += 0.0001  # the worker's DONE, handled at about 0.9 ms
    assert spin.company(script.poll, 1.0) == MSG
    assert set(script.timeouts) == {0} and spin.armed  # polled without sleeping, and still back to back


def test_paced_requests_never_make_it_spin() -> None:
    for gap_s, after_s in [(0.0011, 0.0002), (0.0009, 0.0001)]:  # too far apart; the next one not due in the spin
        script = Scripted([0.005])
        spin = idle(script)
        answered_every(spin, script, gap_s)
        script.now += after_s
        assert spin.company(script.poll, 1.0) == [] and script.timeouts == []


def test_when_no_request_comes_after_all_it_gives_up_and_the_next_wait_sleeps() -> None:
    script = Scripted([])
    spin = idle(script)
    spin.armed = True
    answered_every(spin, script, 0.0006)
    assert spin.company(script.poll, 1.0) == [] and set(script.timeouts) == {0}
    assert not spin.armed


def test_with_spin_off_nothing_waits_for_company() -> None:
    script = Scripted([0.0001])
    spin = idle(script, 0.0)
    answered_every(spin, script, 0.0002)
    assert spin.company(script.poll, 1.0) == [] and script.timeouts == []


def test_company_ends_when_the_next_timer_is_due() -> None:
    script = Scripted([0.0011])  # the producer's next request would come at 1.1 ms...
    spin = idle(script)
    answered_every(spin, script, 0.0006)
    script.now += 0.0001
    timer_at = script.now + 0.0002
    assert spin.company(script.poll, 0.0002) == []  # ...but a timer is due in 0.2 ms: it runs on time
    assert all(t == 0 for t in script.timeouts) and script.now <= timer_at + 0.0001
    script.timeouts.clear()
    assert spin.company(script.poll, 0.0) == [] and script.timeouts == []  # a timer due now: no spin at all

