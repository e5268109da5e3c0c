"""One task of a stage as its executor resolved it (local files), planned where it runs.

The executor hands the task to a query worker, which plans it there. Its exchange inputs
are in-memory tables over memory-mapped IPC files (no copy), so DataFusion knows their
exact row counts and sizes and builds each join on its smaller side; over IPC files as
listing tables it knows nothing and keeps the plan's order (TPC-H q18 built a hash table
of every joined row to semi-join 57 of them). A physical plan holding in-memory tables
would not travel to another process without copying the data, hence planning in the
worker.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
from datafusion import DataFrame, SessionContext
from datafusion import substrait as ds_substrait

from engine.bridge import base_context
from engine.config import EngineConfig
from engine.distributed.ids import StageId
from engine.distributed.planner import ScanSpec, input_name
from engine.distributed.shuffle import open_shuffle_file
from engine.errors import DataUnavailable


@dataclass(frozen=True)
class StageTask:
    """What a worker needs to run one task of a stage."""

    plan: bytes  # Substrait
    schema: pa.Schema
    scans: tuple[ScanSpec, ...]  # with this task's files only
    inputs: dict[StageId, tuple[pa.Schema, tuple[Path, ...]]]  # local IPC files per input
    scratch: Path  # a directory of the task's own
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
            "scratch": str(self.scratch),
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
            Path(body["scratch"]), int(body["target_partitions"]))


def stage_frame(config: EngineConfig, task: StageTask) -> tuple[SessionContext, DataFrame]:
    """The task's stage as a DataFrame over its scan files and exchange inputs, and the
    context to run it in."""
    config = replace(config, target_partitions=task.target_partitions)
    ctx = base_context(config)
    for scan in task.scans:
        _register_parquet(ctx, scan.name, [Path(f) for f in scan.files], scan.schema,
                          task.scratch)
    for stage, (schema, paths) in task.inputs.items():
        ctx.register_record_batches(input_name(stage),
                                    _mapped_partitions(paths, schema, config.target_partitions))
    plan = ds_substrait.Serde.deserialize_bytes(task.plan)
    logical = ds_substrait.Consumer.from_substrait_plan(ctx, plan)
    return ctx, ctx.create_dataframe_from_logical_plan(logical)


def _register_parquet(ctx: SessionContext, name: str, files: list[Path], schema: pa.Schema,
                      scratch: Path) -> None:
    """`files` as one listing table: Substrait reads need a real table scan, not a view."""
    folder = scratch / name
    folder.mkdir(parents=True)
    for number, file in enumerate(files):
        if not file.is_file():  # a dangling link would be skipped: rows lost, no error
            raise DataUnavailable(f"data file {file} is missing")
        (folder / f"{number:06d}.parquet").symlink_to(file.resolve())
    ctx.register_parquet(name, str(folder), schema=schema, file_extension=".parquet")


def _mapped_partitions(paths: tuple[Path, ...], schema: pa.Schema, partitions: int
                       ) -> list[list[pa.RecordBatch]]:
    """The files' batches, memory-mapped, dealt round-robin into `partitions` lists."""
    batches = []
    for path in paths:
        reader = open_shuffle_file(path)
        batches += [reader.get_batch(i) for i in range(reader.num_record_batches)]
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
