"""Shuffle files: map tasks write hash partitions as Arrow IPC files, readers fetch them.

The IPC file format (not the stream format) because DataFusion reads it directly: a
reducer on the same host registers the files as a table, and fetched ones likewise.

Layout: `{work}/{job}/{stage}.{stage_attempt}/{partition}/{map_task}.{attempt}.arrows`,
written under a temporary name and renamed, so a reader never sees a partial file.
Only validated typed keys (a UUID job id and small integers) ever become paths.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datafusion
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.arrow_types import sized_batches
from engine.distributed.ids import Attempt, JobId, StageId

_TICKET_VERSION = 1
_MAX_INDEX = 1 << 20
# Uncompressed: files are read back memory-mapped and served over Flight uncompressed, so
# lz4 only cost CPU (measured on 189 MB of lineitem: write 90 against 230 ms, read 5
# against 150-420 ms), on the map side and again on each fetch.
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)
_HASHED_BATCH_BYTES = 4 * 1024 * 1024
_MULTIPLIER = 0x9E3779B97F4A7C15  # odd, about 2**64 / golden ratio: spreads every bit up
_NULL_KEY = 0x7F4A7C159E3779B9


class BadShuffleKey(ValueError):
    """A shuffle ticket or key that is malformed or out of range."""


@dataclass(frozen=True)
class ShuffleKey:
    job: JobId
    stage: StageId
    stage_attempt: Attempt
    partition: int
    map_task: int
    attempt: Attempt

    def __post_init__(self) -> None:
        try:
            canonical = str(uuid.UUID(self.job))
        except (ValueError, TypeError, AttributeError):
            raise BadShuffleKey("job id must be a UUID") from None
        if canonical != self.job:
            raise BadShuffleKey("job id must be a canonical lower-case UUID")
        for name in ("stage", "stage_attempt", "partition", "map_task", "attempt"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < _MAX_INDEX:
                raise BadShuffleKey(f"{name} must be an integer in [0, {_MAX_INDEX})")

    def path(self, work_dir: Path) -> Path:
        return (work_dir / self.job / f"{self.stage}.{self.stage_attempt}" / str(self.partition)
                / f"{self.map_task}.{self.attempt}.arrows")

    def ticket(self) -> bytes:
        return json.dumps({"v": _TICKET_VERSION, **asdict(self)}, sort_keys=True).encode()

    @classmethod
    def from_ticket(cls, raw: bytes) -> ShuffleKey:
        if len(raw) > 1024:
            raise BadShuffleKey("shuffle ticket is too long")
        try:
            fields = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise BadShuffleKey("shuffle ticket is not JSON") from None
        if not isinstance(fields, dict) or fields.pop("v", None) != _TICKET_VERSION:
            raise BadShuffleKey(f"shuffle ticket must be version {_TICKET_VERSION}")
        expected = {"job", "stage", "stage_attempt", "partition", "map_task", "attempt"}
        if set(fields) != expected:
            raise BadShuffleKey(f"shuffle ticket needs exactly the fields {sorted(expected)}")
        return cls(**fields)


RESULT_TICKET_PREFIX = b"krishiv-result:"


def sign_result_ticket(key: ShuffleKey, secret: str, expires_at: float) -> bytes:
    """A ticket a client may present to an executor for one result partition.

    Clients do not hold the executor token, so the ticket itself is the permission: it is
    signed with that token and expires.
    """
    body = base64.urlsafe_b64encode(json.dumps(
        {"key": key.ticket().decode(), "expires": round(expires_at, 3)}).encode())
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return RESULT_TICKET_PREFIX + body + b"." + mac


def open_result_ticket(raw: bytes, secret: str, now: float) -> ShuffleKey:
    """The shuffle key a signed result ticket grants; BadShuffleKey if forged or expired."""
    body, _, mac = raw.removeprefix(RESULT_TICKET_PREFIX).rpartition(b".")
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(mac, expected):
        raise BadShuffleKey("result ticket signature does not match")
    try:
        fields = json.loads(base64.urlsafe_b64decode(body))
        key, expires = str(fields["key"]).encode(), float(fields["expires"])
    except (ValueError, KeyError, TypeError):
        raise BadShuffleKey("result ticket is malformed") from None
    if now > expires:
        raise BadShuffleKey("result ticket has expired")
    return ShuffleKey.from_ticket(key)


def partition_ids(batch: pa.RecordBatch, keys: list[str], partitions: int,
                  ctx: datafusion.SessionContext | None = None) -> np.ndarray:
    """Each row's partition, from a hash of its `keys`: the same in every process.

    Integer-like keys (integers, dates, times, timestamps) are mixed in numpy, at a fifth
    of the cost per row of DataFusion's xxhash64 with pmod, used for all other keys. Which
    of the two depends on the key types alone, so both inputs of an equi-join (keys of
    equal types) and every map task of one exchange agree. `ctx` (from
    `hashing_context`) saves making a context per batch.
    """
    id_type = np.min_scalar_type(partitions - 1)
    if partitions == 1:
        return np.zeros(batch.num_rows, id_type)
    key_columns = [batch.column(key) for key in keys]
    if all(_integer_like(column.type) for column in key_columns):
        return _mixed_ids(key_columns, partitions).astype(id_type)
    ctx = ctx or hashing_context()
    ctx.register_record_batches("shuffled", [[batch]])
    try:
        columns = ", ".join('"' + key.replace('"', '""') + '"' for key in keys)
        query = f"SELECT pmod(xxhash64({columns}), {int(partitions)}) FROM shuffled"
        chunks = [b.column(0).to_numpy(zero_copy_only=False) for b in ctx.sql(query).collect()]
    finally:
        ctx.deregister_table("shuffled")
    return np.concatenate(chunks).astype(id_type) if chunks else np.zeros(0, id_type)


def _integer_like(kind: pa.DataType) -> bool:
    return (pa.types.is_integer(kind) or pa.types.is_date(kind) or pa.types.is_time(kind)
            or pa.types.is_timestamp(kind))


def _mixed_ids(columns: list[pa.Array], partitions: int) -> np.ndarray:
    """Multiply-xorshift over each key's 64-bit value, keys folded in order (a null key
    mixes in as its own value); the top 32 bits scaled to [0, partitions) by a multiply
    and shift, not a division. Arithmetic in place: a fifth of the time of a splitmix
    finalizer per key with a temporary per step."""
    with np.errstate(over="ignore"):
        hashed: np.ndarray | None = None
        for column in columns:
            as_int = pc.cast(_as_integers(column), pa.int64(), safe=False)
            values = pc.fill_null(as_int, 0).to_numpy(zero_copy_only=False).view(np.uint64)
            if column.null_count:
                nulls = column.is_null().to_numpy(zero_copy_only=False)
                values = np.where(nulls, np.uint64(_NULL_KEY), values)
            if hashed is None:
                hashed = values * np.uint64(_MULTIPLIER)
            else:
                hashed ^= hashed >> np.uint64(32)
                hashed ^= values
                hashed *= np.uint64(_MULTIPLIER)
        assert hashed is not None
        hashed >>= np.uint64(32)
        hashed *= np.uint64(partitions)
        hashed >>= np.uint64(32)
        return hashed


def _as_integers(column: pa.Array) -> pa.Array:
    """Temporal values as the integers they are stored as."""
    if pa.types.is_integer(column.type):
        return column
    return column.view(pa.int32() if column.type.bit_width == 32 else pa.int64())


def hashing_context() -> datafusion.SessionContext:
    # One partition: with more, DataFusion may reorder rows and misalign the ids.
    ctx = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(1))
    ctx.enable_spark_functions()  # pmod and xxhash64
    return ctx


def split_by_partition(batch: pa.RecordBatch, ids: np.ndarray, partitions: int
                       ) -> list[pa.RecordBatch]:
    """`batch`'s rows per partition id, each in its original order: one stable sort of
    the ids (numpy sorts integers this small by radix, in linear time) and one take."""
    ordered = batch.take(pa.array(np.argsort(ids, kind="stable")))
    pieces, offset = [], 0
    for size in np.bincount(ids, minlength=partitions).tolist():
        pieces.append(ordered.slice(offset, size))
        offset += size
    return pieces


@dataclass(frozen=True)
class MapOutput:
    """Where and how a map task writes its output: hash(`keys`) into `partitions` files
    under `work_dir`, named by `task` (its `partition` field is ignored)."""

    work_dir: Path
    task: ShuffleKey
    keys: tuple[str, ...]
    partitions: int

    def encode(self) -> bytes:
        return json.dumps({"work_dir": str(self.work_dir), "task": self.task.ticket().decode(),
                           "keys": list(self.keys), "partitions": self.partitions}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> MapOutput:
        fields = json.loads(raw)
        return cls(Path(fields["work_dir"]), ShuffleKey.from_ticket(fields["task"].encode()),
                   tuple(fields["keys"]), int(fields["partitions"]))

    def write(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
              first_written: Callable[[], None] = lambda: None) -> dict[int, int]:
        """Write `batches`; `first_written` is called once the first batch is written
        (fault injection's mid-shuffle point); rows per partition."""
        numpy_hashed = self.partitions > 1 and all(
            _integer_like(schema.field(key).type) for key in self.keys)
        if not numpy_hashed:
            # DataFusion's hashing costs about 0.7 ms a call besides its rows, and a
            # gathered result streams to clients: batches of megabytes, not DataFusion's
            # 8k-row ones. Keys hashed in numpy need no copy into larger batches.
            batches = sized_batches(batches, _HASHED_BATCH_BYTES, max_hold_s=math.inf)
        return write_map_output(self.work_dir, self.task, _after_first(batches, first_written),
                                schema, list(self.keys), self.partitions)


def _after_first(batches: Iterable[pa.RecordBatch], first_written: Callable[[], None]
                 ) -> Iterator[pa.RecordBatch]:
    count = 0
    for batch in batches:
        if count == 1:  # asked for the second: the first is written
            first_written()
        yield batch
        count += 1
    if count == 1:
        first_written()


def write_map_output(
    work_dir: Path,
    task: ShuffleKey,
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    keys: list[str],
    partitions: int,
) -> dict[int, int]:
    """Hash-partition one map task's `batches` into a file per output partition.

    `task` names the map task (its `partition` field is ignored); returns rows per partition.
    """
    targets = [replace(task, partition=p) for p in range(partitions)]
    temporary = [t.path(work_dir).with_suffix(f".{uuid.uuid4().hex}.tmp") for t in targets]
    counts = dict.fromkeys(range(partitions), 0)
    ctx = hashing_context()
    try:
        writers = []
        for path in temporary:
            path.parent.mkdir(parents=True, exist_ok=True)
            writers.append(pa.ipc.new_file(str(path), schema, options=_WRITE_OPTIONS))
        for batch in batches:
            pieces = ([batch] if partitions == 1  # a gather: no copy to sort rows by id
                      else split_by_partition(batch, partition_ids(batch, keys, partitions, ctx),
                                              partitions))
            for partition, piece in enumerate(pieces):
                if piece.num_rows:
                    writers[partition].write_batch(piece)
                    counts[partition] += piece.num_rows
        for writer in writers:
            writer.close()
        for path, target in zip(temporary, targets, strict=True):
            os.replace(path, target.path(work_dir))
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return counts


def read_partition(work_dir: Path, key: ShuffleKey) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema and batches of one shuffle file; FileNotFoundError if it is not there."""
    reader = open_shuffle_file(key.path(work_dir))
    return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))


def open_shuffle_file(path: Path) -> pa.ipc.RecordBatchFileReader:
    """A shuffle file, memory-mapped: its batches are read without a copy, and stay
    readable after the file is removed."""
    return pa.ipc.open_file(pa.memory_map(str(path)))


def sweep_work_dir(work_dir: Path, older_than_s: float, now: float) -> list[str]:
    """Delete job folders untouched for `older_than_s` (all of them with 0): shuffle files
    whose job's end was never announced, e.g. by a coordinator that died. Only folders
    named by a job id are touched."""
    removed = []
    for entry in work_dir.iterdir() if work_dir.exists() else ():
        try:
            is_job = str(uuid.UUID(entry.name)) == entry.name and entry.is_dir()
            stale = now - entry.stat().st_mtime >= older_than_s
        except (ValueError, OSError):
            continue
        if is_job and stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


@dataclass(frozen=True)
class Written:
    rows: int
    bytes: int  # of the batches in memory, as they travelled (the file may be compressed)


def write_arrow_file(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]
                     ) -> Written:
    """Fetched shuffle data as a local IPC file (atomically); what was written."""
    temporary = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
    rows = size = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.ipc.new_file(str(temporary), schema, options=_WRITE_OPTIONS) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
                size += batch.nbytes
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return Written(rows, size)
