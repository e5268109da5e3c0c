"""Admission control: at most N queries run, at most M wait; past that, refuse at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.errors import QueryCancelled, QueryTimeout, ServerBusy

_POLL_SECONDS = 0.05


class Admission:
    def __init__(self, max_running: int, max_queued: int) -> None:
        self._max_running = max_running
        self._max_queued = max_queued
        self._running = 0
        self._queued = 0
        self._changed = threading.Condition()

    @contextmanager
    def slot(self, is_cancelled: Callable[[], bool], timeout_s: float | None) -> Iterator[None]:
        """Hold one running slot for the body; wait in the queue if all are taken."""
        self._enter(is_cancelled, timeout_s)
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify()

    def refuse_if_full(self) -> None:
        """Refuse at once when a query could not even wait: called before planning, so a
        client turned away does not first pay for a prepare and a plan."""
        with self._changed:
            if self._running >= self._max_running and self._queued >= self._max_queued:
                raise self._busy()

    def _busy(self) -> ServerBusy:
        return ServerBusy(f"server busy: {self._running} queries running and {self._queued} "
                          "waiting; try again later")

    def _enter(self, is_cancelled: Callable[[], bool], timeout_s: float | None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            if self._running < self._max_running:
                self._running += 1
                return
            if self._queued >= self._max_queued:
                raise self._busy()
            self._queued += 1
            try:
                while self._running >= self._max_running:
                    self._changed.wait(_POLL_SECONDS)
                    if is_cancelled():
                        raise QueryCancelled("query cancelled while waiting to run")
                    if deadline is not None and time.monotonic() > deadline:
                        raise QueryTimeout(
                            f"query exceeded the server's timeout of {timeout_s:g} s "
                            "while waiting to run"
                        )
            finally:
                self._queued -= 1
            self._running += 1
