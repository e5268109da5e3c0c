"""Queries run in worker processes, so that a cancel or a timeout really stops them.

Once DataFusion computes a batch it cannot be interrupted from Python: an abandoned
stream's CPU-bound operators run on to the end (measured: a cross join kept a core busy
for as long as the whole query would have run). The server therefore plans a query,
ships the physical plan (DataFusion's protobuf bytes) to a worker process and reads the
result back as Arrow IPC messages; a cancel or timeout kills the worker.

Frames on both pipes: one kind byte, an 8-byte big-endian length, the payload. Result
messages themselves pass through a few slots of memory the two processes share; the
pipe only says which slot holds the next one, and the server says when it is free again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import mmap
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO

import pyarrow as pa

from engine.config import EngineConfig
from engine.distributed.shuffle import MapOutput
from engine.errors import WorkerLost
from engine.runner import limits_check
from engine.translate import classify_datafusion_error

REQUEST = b"Q"  # the plan part: a physical plan
STAGE_REQUEST = b"S"  # the plan part: a stage task (engine.distributed.stage_task)
BATCH = b"B"
FIRST_WRITTEN = b"F"  # a map task's first batch is in its files
SLOT = b"M"  # a result message in shared memory: slot, offset and length (_SLOT_REF)
ACK = b"A"  # to the worker: the slot (one byte) is free again
END = b"E"  # the payload: empty, or a map task's rows per partition (JSON)
ERROR = b"X"
_HEADER = struct.Struct(">cQ")
_SLOT_REF = struct.Struct(">BIQ")
SLOT_COUNT = 3
_POLL_SECONDS = 0.05
_READ_CHUNK = 1 << 20
_PIPE_BYTES = 1 << 20


def write_frame(out: IO[bytes], kind: bytes, payload: bytes | pa.Buffer = b"") -> None:
    out.write(_HEADER.pack(kind, len(payload)))
    if len(payload):
        out.write(payload)


def read_frame(source: IO[bytes]) -> tuple[bytes, bytes] | None:
    """A whole frame from a blocking stream, or None at end of stream."""
    header = source.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    kind, length = _HEADER.unpack(header)
    return kind, source.read(length)


def encode_request(config: EngineConfig, schema: pa.Schema, plan: bytes,
                   output: MapOutput | None = None) -> bytes:
    """What a worker needs: the engine settings, the result schema, the plan, and for a
    map task, where to write its output (else the batches come back over the pipe)."""
    settings = json.dumps(dataclasses.asdict(config)).encode()
    schema_bytes = schema.serialize().to_pybytes()
    parts = [settings, schema_bytes, plan, output.encode() if output else b""]
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def decode_request(payload: bytes
                   ) -> tuple[EngineConfig, pa.Schema, bytes, MapOutput | None]:
    parts: list[bytes] = []
    offset = 0
    while offset < len(payload):
        (length,) = struct.unpack_from(">Q", payload, offset)
        parts.append(payload[offset + 8: offset + 8 + length])
        offset += 8 + length
    settings, schema_bytes, plan, output = parts
    config = EngineConfig(**json.loads(settings))
    return (config, pa.ipc.read_schema(pa.py_buffer(schema_bytes)), plan,
            MapOutput.decode(output) if output else None)


class ResultSlots:
    """Fixed-size slots in one shared memory file, through which a worker hands result
    messages to its server: each byte is copied in once, where a pipe costs a write and a
    read (measured: 0.14 CPU-s per 280 MB through a pipe against 0.03 for one copy)."""

    @staticmethod
    def new_file(slot_bytes: int) -> int:
        """A file descriptor for the slots' memory, which no path names."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("krishiv-results")
        else:  # not Linux: an unlinked temporary file
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        os.ftruncate(fd, SLOT_COUNT * slot_bytes)
        return fd

    def __init__(self, fd: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.memory = mmap.mmap(fd, SLOT_COUNT * slot_bytes)

    def view(self, slot: int, offset: int, length: int) -> memoryview:
        start = slot * self.slot_bytes + offset
        return memoryview(self.memory)[start: start + length]


def slot_ref(slot: int, offset: int, length: int) -> bytes:
    return _SLOT_REF.pack(slot, offset, length)


class _Worker:
    """One worker process; its stdout is read without blocking so cancels are seen."""

    def __init__(self, slot_bytes: int) -> None:
        fd = ResultSlots.new_file(slot_bytes)
        try:
            self.slots = ResultSlots(fd, slot_bytes)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "engine.worker_main", str(fd), str(slot_bytes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._fd = self.process.stdout.fileno()
        os.set_blocking(self._fd, False)
        # Results arrive in batches of megabytes: fewer wake-ups with a larger pipe (kept
        # at the default where the system's pipe-max-size is lower).
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)

    def send(self, kind: bytes, payload: bytes) -> None:
        try:
            write_frame(self._stdin, kind, payload)
            self._stdin.flush()
        except OSError:
            raise self._lost() from None

    def read_frame(self, until: Callable[[], None]) -> tuple[bytes, memoryview]:
        """The next frame; `until` is called while waiting and raises to give up."""
        kind, length = _HEADER.unpack(self._read(_HEADER.size, until))
        return kind, self._read(length, until)

    def _read(self, size: int, until: Callable[[], None]) -> memoryview:
        # From Arrow's pool: a bytearray would zero-fill megabytes per batch first.
        buffer = memoryview(pa.allocate_buffer(size)).cast("B")
        filled = 0
        while filled < size:
            try:
                count = os.readv(self._fd, [buffer[filled: filled + _READ_CHUNK]])
            except BlockingIOError:
                select.select([self._fd], [], [], _POLL_SECONDS)
                until()
                continue
            if count == 0:
                raise self._lost()
            filled += count
        return buffer

    def _lost(self) -> WorkerLost:
        code = self.process.wait()
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return WorkerLost(f"the query's worker process ended unexpectedly ({how})")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._stdin.close()
        if self.process.stdout is not None:
            self.process.stdout.close()


class QueryWorkers:
    """Worker processes, reused from query to query.

    `keep_started` are started ahead so a query need not wait for one (a start costs
    about half a second of CPU); up to `max_idle` finished ones wait for the next query.
    """

    def __init__(self, config: EngineConfig, keep_started: int = 2) -> None:
        self._config = config
        self._keep_started = keep_started
        self._max_idle = max(keep_started, config.max_running_queries)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False
        self._refill()

    def batches(
        self,
        plan: bytes,
        schema: pa.Schema,
        timeout_s: float | None,
        is_cancelled: Callable[[], bool],
        encoded: bool = False,
        batch_rows: int | None = None,
    ) -> Iterator[pa.RecordBatch | pa.Buffer]:
        """Run `plan` in a worker, reading `batch_rows` rows at a time (default: the
        configured batch size); batches with `schema`, at most `max_batch_bytes` each
        (with `encoded`, as the IPC messages the worker sent, each valid only until the
        next is asked for: its memory is then the worker's again)."""
        config = (self._config if batch_rows is None
                  else dataclasses.replace(self._config, batch_size=batch_rows))
        request = encode_request(config, schema, plan)
        for kind, payload in self._frames(REQUEST, request, timeout_s, is_cancelled):
            if kind == BATCH:
                # A message in shared memory is only valid until the next frame is read.
                message = pa.py_buffer(payload if encoded else bytes(payload))
                yield message if encoded else pa.ipc.read_record_batch(message, schema)

    def write_map_output(
        self,
        plan: bytes,
        schema: pa.Schema,
        output: MapOutput,
        timeout_s: float | None,
        is_cancelled: Callable[[], bool],
        first_written: Callable[[], None],
        stage_task: bool = False,
    ) -> dict[int, int]:
        """Run a map task's `plan` (a physical plan, or with `stage_task` an encoded stage
        task the worker plans itself) in a worker that writes `output` itself (its rows
        never cross the pipe); rows per partition."""
        request = encode_request(self._config, schema, plan, output)
        request_kind = STAGE_REQUEST if stage_task else REQUEST
        for kind, payload in self._frames(request_kind, request, timeout_s, is_cancelled):
            if kind == FIRST_WRITTEN:
                first_written()
            elif kind == END:
                return {int(p): rows for p, rows in json.loads(bytes(payload)).items()}
        raise AssertionError("unreachable: the frames end with END or raise")

    def _frames(self, request_kind: bytes, request: bytes, timeout_s: float | None,
                is_cancelled: Callable[[], bool]) -> Iterator[tuple[bytes, memoryview]]:
        """Send `request` to a worker and yield its frames up to and including END; an
        ERROR frame raises. A message in a shared slot comes as a BATCH frame whose
        payload is the slot's memory, freed when the next frame is asked for. The worker
        is reused only if its answer was read to END."""
        until = limits_check(timeout_s, is_cancelled)
        worker = self._take()
        reusable = False
        try:
            worker.send(request_kind, request)
            while True:
                kind, payload = worker.read_frame(until)
                if kind == SLOT:
                    slot, offset, length = _SLOT_REF.unpack(payload)
                    yield BATCH, worker.slots.view(slot, offset, length)
                    worker.send(ACK, bytes([slot]))
                    continue
                if kind == ERROR:  # the worker ends after reporting it
                    raise classify_datafusion_error(Exception(bytes(payload).decode()))
                reusable = kind == END
                yield kind, payload
                if reusable:
                    return
        finally:
            self._give_back(worker) if reusable else self._discard(worker)

    def _take(self) -> _Worker:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None or worker.process.poll() is not None:
            worker = self._new_worker()
        return worker

    def _new_worker(self) -> _Worker:
        # Room for a message of the largest batch, its metadata and padding.
        return _Worker(self._config.max_batch_bytes + (256 << 10))

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(worker)
                return
        worker.kill()

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._refill()

    def _refill(self) -> None:
        with self._lock:
            while not self._closed and len(self._idle) < self._keep_started:
                self._idle.append(self._new_worker())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
