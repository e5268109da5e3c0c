"""Admission control in isolation: limits, arrival order, cancels and timeouts."""

from __future__ import annotations

import threading
import time

import pytest

from engine.admission import Admission
from engine.errors import QueryCancelled, QueryTimeout, ServerBusy


def _never() -> bool:
    return False


def test_waiting_queries_run_in_arrival_order() -> None:
    admission = Admission(max_running=1, max_queued=10)
    order: list[int] = []
    release = threading.Event()

    def query(number: int) -> None:
        with admission.slot(_never, None):
            order.append(number)
            if number == 0:
                release.wait(5)

    threads = [threading.Thread(target=query, args=(0,))]
    threads[0].start()
    while not order:
        time.sleep(0.01)
    for number in range(1, 6):
        thread = threading.Thread(target=query, args=(number,))
        thread.start()
        threads.append(thread)
        time.sleep(0.05)  # each queues behind the one before
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4, 5]


def test_full_queue_refuses_at_once_and_a_cancelled_wait_gives_its_place_back() -> None:
    admission = Admission(max_running=1, max_queued=1)
    cancelled = threading.Event()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with admission.slot(cancelled.is_set, None):
                pass
        except BaseException as exc:
            errors.append(exc)

    with admission.slot(_never, None):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)
        with pytest.raises(ServerBusy, match="1 queries running and 1 waiting"):
            admission.refuse_if_full()
        started = time.monotonic()
        with pytest.raises(ServerBusy):
            admission.slot(_never, None).__enter__()
        assert time.monotonic() - started < 0.5
        cancelled.set()
        thread.join(5)
        assert isinstance(errors[0], QueryCancelled)
        admission.refuse_if_full()  # the queue has room again
    with admission.slot(_never, None):  # and the running slot was returned
        pass


def test_a_wait_past_the_timeout_fails() -> None:
    admission = Admission(max_running=1, max_queued=4)
    with admission.slot(_never, None):
        waiting = admission.slot(_never, 0.2)
        with pytest.raises(QueryTimeout):
            waiting.__enter__()
    with admission.slot(_never, None):
        pass
