"""One task of a stage as its executor resolved it (local files), planned where it runs.

The executor hands the task to a query worker, which plans it there. Its exchange inputs
are in-memory tables over memory-mapped IPC files (no copy), so DataFusion knows their
exact row counts and sizes and builds each join on its smaller side; over IPC files as
listing tables it knows nothing and keeps the plan's order (TPC-H q18 built a hash table
of every joined row to semi-join 57 of them). A physical plan holding in-memory tables
would not travel to another process without copying the data, hence planning in the
worker.

A worker keeps its contexts between tasks, and a task's files are linked into a folder
named by the file list, the same for every task that reads those files: DataFusion keeps
each Parquet file's footer in its context, by path, so a task over files an earlier one
read plans and opens them without decoding the footers again (planning a scan of three
lineitem files at SF 1: 8.6 ms in a new context, 1.4 ms again in the same).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
from datafusion import DataFrame, SessionContext
from datafusion import substrait as ds_substrait
from datafusion.catalog import Table
from datafusion.plan import ExecutionPlan

from engine.arrow_types import scan_schema
from engine.bridge import base_context, write_links
from engine.config import EngineConfig
from engine.distributed.ids import StageId
from engine.distributed.planner import ScanSpec, input_name
from engine.distributed.shuffle import open_shuffle_file
from engine.errors import DataUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageTask:
    """What a worker needs to run one task of a stage."""

    plan: bytes  # Substrait
    schema: pa.Schema
    scans: tuple[ScanSpec, ...]  # with this task's files only
    inputs: dict[StageId, tuple[pa.Schema, tuple[Path, ...]]]  # local IPC files per input
    links: Path  # where the folders of linked scan files are, shared by tasks
    target_partitions: int  # the streams DataFusion splits the task into

    def encode(self) -> bytes:
        return json.dumps({
            "plan": as_text(self.plan),
            "schema": schema_text(self.schema),
            "scans": [{"name": s.name, "table": s.table, "files": list(s.files),
                       "schema": schema_text(s.schema)} for s in self.scans],
            "inputs": [{"stage": stage, "schema": schema_text(schema),
                        "paths": [str(p) for p in paths]}
                       for stage, (schema, paths) in self.inputs.items()],
            "links": str(self.links),
            "target_partitions": self.target_partitions,
        }).encode()

    @classmethod
    def decode(cls, raw: bytes) -> StageTask:
        body = json.loads(raw)
        return cls(
            from_text(body["plan"]), schema_from_text(body["schema"]),
            tuple(ScanSpec(s["name"], s["table"], tuple(s["files"]),
                           schema_from_text(s["schema"]), split=False) for s in body["scans"]),
            {StageId(int(i["stage"])): (schema_from_text(i["schema"]),
                                        tuple(Path(p) for p in i["paths"]))
             for i in body["inputs"]},
            Path(body["links"]), int(body["target_partitions"]))


_TABLES_KEPT = 256  # file tables each context keeps, least recently used out first


class _TaskContext:
    """A context and the Parquet tables it made, by link folder and schema: a table kept
    keeps its files' statistics too, so a task over the same files neither lists nor
    reads them to plan."""

    def __init__(self, config: EngineConfig) -> None:
        self.ctx = base_context(config)
        self._tables: OrderedDict[tuple[Path, bytes], Table] = OrderedDict()

    def files_table(self, folder: Path, schema: pa.Schema) -> Table:
        key = (folder, schema.serialize().to_pybytes())
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            return table
        hidden = f"__files_{len(self._tables)}"
        self.ctx.register_parquet(hidden, str(folder), schema=schema, file_extension=".parquet")
        try:
            table = self.ctx.catalog().schema().table(hidden)
        finally:
            self.ctx.deregister_table(hidden)
        self._tables[key] = table
        if len(self._tables) > _TABLES_KEPT:
            self._tables.popitem(last=False)
        return table


# Configurations differ by target partitions and rows per batch (engine.session's
# result_batch_rows, which sizes plain reads' batches by their rows' width): past this
# many, the least recently used context goes (making one costs 0.5-1 ms).
_CONTEXTS_KEPT = 8
# Stage plans DataFusion could not plan over string views, remembered (by digest) so
# that their other tasks plan over plain strings at once.
_PLAIN_ONLY_KEPT = 256


class StageContexts:
    """The contexts one worker plans and runs its stage tasks and physical plans in, one
    per engine configuration, kept from task to task; a worker runs one at a time."""

    def __init__(self) -> None:
        self._contexts: dict[EngineConfig, _TaskContext] = {}
        self._plain_only: OrderedDict[bytes, None] = OrderedDict()

    def context(self, config: EngineConfig) -> SessionContext:
        """The context kept for `config` (making one costs 0.5-1 ms in a worker)."""
        return self._kept(config).ctx

    def _kept(self, config: EngineConfig) -> _TaskContext:
        kept = self._contexts.pop(config, None) or _TaskContext(config)
        self._contexts[config] = kept  # the most recently used last
        while len(self._contexts) > _CONTEXTS_KEPT:
            del self._contexts[next(iter(self._contexts))]
        return kept

    @contextmanager
    def physical_plan(self, config: EngineConfig, task: StageTask
                      ) -> Iterator[tuple[SessionContext, ExecutionPlan]]:
        """The task's stage as a physical plan, and the context to run it in. Its scans
        read strings as views (as the embedded runtime does, engine.arrow_types.scan_schema:
        read as the plan's plain strings, every batch was copied out of the files' large
        strings; TPC-H q22's customer stage took 74 ms, with views 33), unless DataFusion
        cannot plan the stage so (its type coercion fails on some Substrait plans over
        views: TPC-H q7's join of two nation scans); then they read plain strings."""
        digest = hashlib.sha256(task.plan).digest()
        views_failed = False
        if digest not in self._plain_only:
            with ExitStack() as attempt:
                try:
                    ctx, frame = attempt.enter_context(self.frame(config, task, views=True))
                    plan = frame.execution_plan()
                except (DataUnavailable, OSError):
                    raise  # missing files: no planning over plain strings finds them
                except Exception as exc:  # a real error comes again from the plain attempt
                    log.debug("stage planned again over plain strings: %s", exc)
                    views_failed = True
                else:
                    yield ctx, plan
                    return
        with self.frame(config, task) as (ctx, frame):
            plan = frame.execution_plan()
            if views_failed:  # remembered once planning over plain strings has worked
                self._plain_only[digest] = None
                if len(self._plain_only) > _PLAIN_ONLY_KEPT:
                    self._plain_only.popitem(last=False)
            yield ctx, plan

    @contextmanager
    def frame(self, config: EngineConfig, task: StageTask, views: bool = False
              ) -> Iterator[tuple[SessionContext, DataFrame]]:
        """The task's stage as a DataFrame over its scan files and exchange inputs, and
        the context to run it in; the task's tables are gone from the context after."""
        inputs = {stage: (schema, shuffle_batches(paths))
                  for stage, (schema, paths) in task.inputs.items()}
        with self.frame_over(config, task.plan, task.target_partitions, inputs, task.scans,
                             task.links, views) as made:
            yield made

    @contextmanager
    def frame_over(self, config: EngineConfig, plan: bytes, target_partitions: int,
                   inputs: dict[StageId, tuple[pa.Schema, list[pa.RecordBatch]]],
                   scans: tuple[ScanSpec, ...] = (), links: Path | None = None,
                   views: bool = False) -> Iterator[tuple[SessionContext, DataFrame]]:
        """The stage `plan` over exchange inputs given as batches (and `scans`, their
        files linked under `links`, strings read as views with `views`), as `frame`
        makes it."""
        kept = self._kept(replace(config, target_partitions=target_partitions))
        ctx = kept.ctx
        registered: list[str] = []
        try:
            for scan in scans:
                assert links is not None, "scans need a folder for their links"
                folder = linked_files([Path(f) for f in scan.files], links)
                # Substrait reads need a real table scan, not a view.
                schema = scan_schema(scan.schema) if views else scan.schema
                ctx.register_table(scan.name, kept.files_table(folder, schema))
                registered.append(scan.name)
            for stage, (schema, batches) in inputs.items():
                ctx.register_record_batches(input_name(stage),
                                            _dealt(batches, schema, target_partitions))
                registered.append(input_name(stage))
            substrait = ds_substrait.Serde.deserialize_bytes(plan)
            logical = ds_substrait.Consumer.from_substrait_plan(ctx, substrait)
            yield ctx, ctx.create_dataframe_from_logical_plan(logical)
        finally:
            for name in registered:
                ctx.deregister_table(name)


def linked_files(files: list[Path], links: Path) -> Path:
    """A folder of links to `files`, in order, named by them: the same folder for every
    task that reads the same files. Made under a temporary name and renamed, so a worker
    never lists another's half-made folder."""
    targets = []
    for file in files:
        if not file.is_file():  # a dangling link would be skipped: rows lost, no error
            raise DataUnavailable(f"data file {file} is missing")
        targets.append(file.resolve())
    digest = hashlib.sha256("\n".join(map(str, targets)).encode()).hexdigest()[:32]
    folder = links / digest
    try:
        os.utime(folder)  # in use: sweep_links keeps it
        return folder
    except FileNotFoundError:
        pass
    temporary = links / f".{digest}.{uuid.uuid4().hex}"
    temporary.mkdir(parents=True)
    write_links(temporary, targets)
    try:
        temporary.rename(folder)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
        if not folder.is_dir():  # else another worker made it first
            raise
    return folder


def sweep_links(links: Path, older_than_s: float, now: float) -> int:
    """Delete link folders unused for `older_than_s` (their tables have other files now),
    and half-made ones a killed worker left; how many went. Each is renamed away first:
    a task that took it up meanwhile finds it gone, never half deleted (a listing of
    some of its links would read some of the files, without an error)."""
    removed = 0
    for entry in links.iterdir() if links.is_dir() else ():
        try:
            if now - entry.stat().st_mtime < older_than_s:
                continue
            doomed = links / f".swept.{uuid.uuid4().hex}"
            entry.rename(doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed += 1
    return removed


def shuffle_batches(paths: Iterable[Path]) -> list[pa.RecordBatch]:
    """The batches of shuffle files, memory-mapped (no copy)."""
    return shuffle_readers_batches(open_shuffle_file(path) for path in paths)


def shuffle_readers_batches(readers: Iterable[pa.ipc.RecordBatchFileReader]
                            ) -> list[pa.RecordBatch]:
    return [reader.get_batch(i) for reader in readers for i in range(reader.num_record_batches)]


def _dealt(batches: list[pa.RecordBatch], schema: pa.Schema, partitions: int
           ) -> list[list[pa.RecordBatch]]:
    """`batches` dealt round-robin into at most `partitions` lists."""
    if not batches:  # an in-memory table takes its schema from a batch
        batches = [pa.RecordBatch.from_pylist([], schema=schema)]
    count = max(1, min(partitions, len(batches)))
    return [batches[i::count] for i in range(count)]


def as_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


def from_text(text: object) -> bytes:
    return base64.b64decode(str(text), validate=True)


def schema_text(schema: pa.Schema) -> str:
    return as_text(schema.serialize().to_pybytes())


def schema_from_text(text: object) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(from_text(text)))
