"""Server-side state behind opaque handles: planned queries and prepared statements."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

from flight_server.errors import NotFound

V = TypeVar("V")


class HandleStore(Generic[V]):
    """Values by random handle, forgotten after `ttl_s` without use.

    Entries are kept least recently used first, so expiring looks only at the stale
    ones: a sweep over all of them at every call cost time in proportion to the handles
    open (clients such as JDBC pools keep prepared statements open for long)."""

    def __init__(self, kind: str, ttl_s: float) -> None:
        self._kind = kind
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def add(self, value: V) -> bytes:
        handle = secrets.token_bytes(16)
        with self._lock:
            now = time.monotonic()  # taken under the lock: entries stay in time order
            self._expire(now)
            self._entries[handle] = (now, value)
        return handle

    def get(self, handle: bytes) -> V:
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            entry = self._entries.get(handle)
            if entry is None:
                raise NotFound(f"unknown or expired {self._kind} handle")
            self._entries[handle] = (now, entry[1])
            self._entries.move_to_end(handle)
            return entry[1]

    def remove(self, handle: bytes) -> V:
        with self._lock:
            entry = self._entries.pop(handle, None)
        if entry is None:
            raise NotFound(f"unknown or expired {self._kind} handle")
        return entry[1]

    def remove_if_present(self, handle: bytes) -> None:
        with self._lock:
            self._entries.pop(handle, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _expire(self, now: float) -> None:
        while self._entries:
            handle, (used, _) = next(iter(self._entries.items()))
            if now - used <= self._ttl_s:
                return
            del self._entries[handle]
