"""Runs DataFusion result streams in this process under a deadline and a cancel check.

Only for plans that cannot be shipped to a query worker (engine.workers): scans of
tables met first while planning, which read through pyarrow datasets. A waiting client
is released at once on timeout or cancel and the query's slot freed, but the batch
DataFusion is computing runs on to its end (datafusion-python checks for interrupts only
on the main thread, and an abandoned `__anext__` keeps running).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from datafusion import DataFrame

from engine.errors import QueryCancelled, QueryTimeout

_POLL_SECONDS = 0.05


def limits_check(timeout_s: float | None, is_cancelled: Callable[[], bool]
                 ) -> Callable[[], None]:
    """A check, starting its clock now, that raises QueryCancelled once the client cancels
    and QueryTimeout once `timeout_s` has passed; called while a query waits for data."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def check() -> None:
        if is_cancelled():
            raise QueryCancelled("query cancelled by the client")
        if deadline is not None and time.monotonic() > deadline:
            raise QueryTimeout(f"query exceeded the server's timeout of {timeout_s:g} s")

    return check


class StreamRunner:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="krishiv-streams", daemon=True
        )
        self._thread.start()

    def batches(
        self,
        frame: DataFrame,
        timeout_s: float | None,
        is_cancelled: Callable[[], bool],
    ) -> Iterator[pa.RecordBatch]:
        check = limits_check(timeout_s, is_cancelled)
        stream = frame.execute_stream()
        iterator = stream.__aiter__()
        try:
            while True:
                if is_cancelled():
                    raise QueryCancelled("query cancelled by the client")
                batch = self._next(iterator, check)
                if batch is None:
                    return
                yield batch
        finally:
            del iterator, stream

    def _next(self, iterator: Any, check: Callable[[], None]) -> pa.RecordBatch | None:
        future = asyncio.run_coroutine_threadsafe(_anext_or_none(iterator), self._loop)
        while True:
            try:
                return future.result(timeout=_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                try:
                    check()
                except (QueryCancelled, QueryTimeout):
                    future.cancel()
                    raise

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


async def _anext_or_none(iterator: Any) -> pa.RecordBatch | None:
    try:
        batch = await iterator.__anext__()
    except StopAsyncIteration:
        return None
    return batch.to_pyarrow()
