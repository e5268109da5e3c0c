"""Results of plain table reads, kept in memory for the clients that read them again.

A query that only reads columns of tables (`SELECT * FROM t`, `SELECT a AS x FROM t`: no
filter, limit or computed value) returns the same rows for as long as its tables keep
their versions. BI extracts and dataframe loads repeat such reads; decoding the Parquet
files again costs more than sending the rows (10M rows of 4 columns: about 0.4 CPU-s to
decode, 0.2 s to send), so the encoded result messages are kept and sent again.

The key is the physical plan, which names the data files of the versions read, with the
result schema and batch size. The messages are kept in the client's wire form, so sending
them again copies nothing in Python. Entries go least recently used first past a byte
budget, and at once when a table they read is replaced by a newer version.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
from datafusion import DataFrame, ExecutionPlan
from datafusion.expr import Expr, Projection, SubqueryAlias, TableScan
from datafusion.plan import LogicalPlan

from engine.plans import operators, unaliased

# Physical operators of a plain read, each passing on the rows below it unchanged.
_READ_OPERATORS = frozenset({"DataSourceExec", "ProjectionExec", "CoalesceBatchesExec",
                             "CoalescePartitionsExec"})


def plain_read(frame: DataFrame, plan: ExecutionPlan) -> bool:
    """Whether the query only reads columns of tables stored in Parquet files.

    Read from the plan as written: a filter could hold `random()`, a projection `now()`,
    and either makes each run's rows its own."""
    return _columns_of_scans(frame.logical_plan()) and _reads_files(plan)


def _columns_of_scans(plan: LogicalPlan) -> bool:
    node = plan.to_variant()
    if isinstance(node, TableScan):
        return not node.filters() and node.fetch() is None
    if isinstance(node, Projection):
        if not all(_is_column(expr) for expr in node.projections()):
            return False
    elif not isinstance(node, SubqueryAlias):
        return False
    return all(_columns_of_scans(child) for child in plan.inputs())


def _is_column(expr: Expr) -> bool:
    return unaliased(expr).variant_name() == "Column"


def _reads_files(plan: ExecutionPlan) -> bool:
    """Only pass-through operators over Parquet scans: a session's temporary table ships
    its rows inside the plan and is not kept twice."""
    return all(name in _READ_OPERATORS
               and (name != "DataSourceExec" or "file_type=parquet" in text)
               for name, text in operators(plan))


@dataclass(frozen=True)
class _Entry:
    plan: bytes
    messages: tuple[bytes, ...]
    nbytes: int


class ReadResults:
    """Encoded result messages of plain reads (with their plans), at most `max_bytes` of
    them; results still being collected count against a second budget of the same size,
    so that concurrent first reads of big tables cannot hold more."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._nbytes = 0
        self._collecting: set[bytes] = set()
        self._collecting_bytes = 0

    @property
    def kept_bytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(plan: bytes, schema: pa.Schema, batch_rows: int, wire_form: str) -> bytes:
        """The key of a read: its plan, schema and batch size, and the name of the form
        its messages are kept in."""
        digest = hashlib.blake2b(plan, digest_size=32)
        for part in (schema.serialize(), batch_rows.to_bytes(8, "big"), wire_form.encode()):
            digest.update(part)
        return digest.digest()

    def get(self, key: bytes) -> tuple[bytes, ...] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.messages

    def keeping(self, key: bytes, plan: bytes, messages: Iterable[bytes]) -> Iterator[bytes]:
        """`messages`, passed on; kept once all have come, if they fit the budget. One
        read of a key collects at a time; the others only pass their messages on."""
        with self._lock:
            collector = key not in self._collecting and key not in self._entries
            if collector:
                self._collecting.add(key)
        collecting = collector
        kept: list[bytes] = []
        reserved = 0  # bytes of `kept`, counted against the collecting budget
        try:
            for message in messages:
                if collecting and self._reserve(len(message), len(plan) + reserved):
                    kept.append(message)
                    reserved += len(message)
                elif collecting:  # too big to keep: let go of what was collected
                    collecting = False
                    kept.clear()
                    self._release(reserved)
                    reserved = 0
                yield message
            if collecting:
                self._add(key, _Entry(plan, tuple(kept), len(plan) + reserved))
        finally:
            self._release(reserved)
            if collector:
                with self._lock:
                    self._collecting.discard(key)

    def _reserve(self, size: int, entry_bytes: int) -> bool:
        """Whether one more message of `size` may be collected for an entry holding
        `entry_bytes` so far; if so, it counts against the collecting budget."""
        with self._lock:
            if (entry_bytes + size > self.max_bytes
                    or self._collecting_bytes + size > self.max_bytes):
                return False
            self._collecting_bytes += size
            return True

    def _release(self, size: int) -> None:
        with self._lock:
            self._collecting_bytes -= size

    def _add(self, key: bytes, entry: _Entry) -> None:
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = entry
            self._nbytes += entry.nbytes
            while self._nbytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def forget_reading(self, marker: str) -> None:
        """Drop the entries whose plan names `marker`: the name of a replaced version's
        folder of file links, unique to it (plans name the files as paths in it)."""
        needle = marker.encode()
        with self._lock:
            for key in [key for key, entry in self._entries.items() if needle in entry.plan]:
                self._drop(key)

    def _drop(self, key: bytes) -> None:
        self._nbytes -= self._entries.pop(key).nbytes
