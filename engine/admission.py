"""Admission control: at most N queries run, at most M wait; past that, refuse at once.

Waiting queries are admitted in arrival order: a slot freed is handed to the query that
has waited longest, so no query waits behind later ones.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.errors import QueryCancelled, QueryTimeout, ServerBusy

_POLL_SECONDS = 0.05  # how often a waiting query checks for its cancel and timeout


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self._max_running = max_running
        self._max_queued = max_queued
        self._running = 0
        self._waiting: deque[threading.Event] = deque()  # set: a slot was handed over
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, is_cancelled: Callable[[], bool], timeout_s: float | None) -> Iterator[None]:
        """Hold one running slot for the body; wait in the queue if all are taken."""
        self._enter(is_cancelled, timeout_s)
        try:
            yield
        finally:
            self._release()

    def refuse_if_full(self) -> None:
        """Refuse at once when a query could not even wait: called before planning, so a
        client turned away does not first pay for a prepare and a plan."""
        with self._lock:
            if self._running >= self._max_running and len(self._waiting) >= self._max_queued:
                raise self._busy()

    def _busy(self) -> ServerBusy:
        return ServerBusy(f"server busy: {self._running} queries running and "
                          f"{len(self._waiting)} waiting; try again later")

    def _enter(self, is_cancelled: Callable[[], bool], timeout_s: float | None) -> None:
        with self._lock:
            if self._running < self._max_running and not self._waiting:
                self._running += 1
                return
            if len(self._waiting) >= self._max_queued:
                raise self._busy()
            turn = threading.Event()
            self._waiting.append(turn)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while not turn.wait(_POLL_SECONDS):
                if is_cancelled():
                    raise QueryCancelled("query cancelled while waiting to run")
                if deadline is not None and time.monotonic() > deadline:
                    raise QueryTimeout(f"query exceeded the server's timeout of {timeout_s:g} s "
                                       "while waiting to run")
        except BaseException:
            with self._lock:
                if turn in self._waiting:
                    self._waiting.remove(turn)
                    return_slot = False
                else:  # handed a slot just as it gave up: pass the slot on
                    return_slot = True
            if return_slot:
                self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            self._running -= 1
            while self._waiting and self._running < self._max_running:
                self._running += 1  # taken on behalf of the longest-waiting query
                self._waiting.popleft().set()
