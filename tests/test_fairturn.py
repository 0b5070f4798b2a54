"""``servidor.FairTurn``: connection threads take turns in arrival order.

The turn only orders CPU work (correctness never depends on it), so what is
checked is the order it hands the turn over in and that a thread never waits
for it much longer than ``patience``.
"""

from __future__ import annotations

import threading
import time

from servidor import FairTurn


def _start_waiter(turn: FairTurn, name: str, order: list[str],
                  urgent: bool = False) -> threading.Thread:
    """A thread that takes the turn, notes ``name`` and gives it back; returns once queued."""
    def body() -> None:
        held = turn.acquire(urgent)
        order.append(name)
        turn.release(held)

    lane = turn._urgent if urgent else turn._waiting
    queued_before = len(lane)
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    # Wait until this waiter is queued, so the arrival order is the start order.
    deadline = time.monotonic() + 5
    while len(lane) == queued_before and time.monotonic() < deadline:
        time.sleep(0.001)
    return thread


def test_uncontended_turn_is_taken_and_given_back():
    turn = FairTurn()
    assert turn.acquire() is True
    turn.release(True)
    assert turn.acquire() is True
    turn.release(True)


def test_turn_is_handed_over_in_arrival_order():
    turn = FairTurn(patience=5.0)
    order: list[str] = []
    assert turn.acquire()
    threads = [_start_waiter(turn, name, order) for name in ("a", "b", "c", "d")]
    assert len(turn._waiting) == 4
    turn.release(True)
    for thread in threads:
        thread.join(5)
    assert order == ["a", "b", "c", "d"]
    # Everyone gave it back: it is free again.
    assert turn.acquire() is True
    turn.release(True)


def test_a_stuck_holder_delays_others_by_at_most_patience():
    turn = FairTurn(patience=0.05)
    assert turn.acquire()
    started = time.monotonic()
    assert turn.acquire() is False  # gave up waiting: goes ahead without the turn
    assert 0.04 <= time.monotonic() - started < 1.0
    assert len(turn._waiting) == 0  # and left the queue
    turn.release(False)  # releasing a turn never held is a no-op
    turn.release(True)
    assert turn.acquire() is True
    turn.release(True)


def test_a_light_waiter_goes_before_the_busy_ones():
    turn = FairTurn(patience=5.0)
    order: list[str] = []
    assert turn.acquire()
    threads = [_start_waiter(turn, name, order) for name in ("a", "b")]
    threads.append(_start_waiter(turn, "leve", order, urgent=True))
    turn.release(True)
    for thread in threads:
        thread.join(5)
    assert order == ["leve", "a", "b"]


def test_a_stream_of_light_waiters_never_starves_a_busy_one():
    turn = FairTurn(patience=5.0)
    order: list[str] = []
    assert turn.acquire()
    threads = [_start_waiter(turn, "ocupado", order)]
    threads += [_start_waiter(turn, f"leve{n}", order, urgent=True)
                for n in range(FairTurn.URGENT_STREAK + 3)]
    turn.release(True)
    for thread in threads:
        thread.join(5)
    assert order.index("ocupado") == FairTurn.URGENT_STREAK
