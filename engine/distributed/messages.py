"""The JSON bodies that carry a stage task from the coordinator to an executor."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engine.distributed.ids import Attempt, ExecutorId, StageId
from engine.distributed.planner import ScanSpec, StageDef
from engine.distributed.stage_task import as_text, from_text, schema_from_text, schema_text
from engine.distributed.state import OutputLocation


@dataclass(frozen=True)
class InputSource:
    """One map task's output a reducer reads: where it is and its shuffle key parts."""

    executor: ExecutorId
    address: str
    stage_attempt: Attempt
    map_task: int
    attempt: Attempt
    # The writer's work dir, for a reader on the same machine to read in place ("" if
    # the writer does not offer that).
    work_dir: str = ""


@dataclass(frozen=True)
class StageInput:
    stage: StageId
    schema: pa.Schema
    partitions: tuple[int, ...]  # the partitions of every map task's output it reads
    sources: tuple[InputSource, ...]


@dataclass(frozen=True)
class StageTaskMessage:
    plan: bytes
    schema: pa.Schema
    scans: tuple[ScanSpec, ...]
    inputs: tuple[StageInput, ...]
    output_keys: tuple[int, ...]
    output_partitions: int
    tasks: int  # of the stage, this one among them


def encode_stage_task(stage: StageDef, task: int, stages: dict[StageId, StageDef],
                      outputs: dict[StageId, tuple[OutputLocation, ...]],
                      addresses: dict[ExecutorId, str],
                      work_dirs: dict[ExecutorId, str]) -> dict[str, Any]:
    inputs = []
    for source_id in stage.inputs:
        source = stages[source_id]
        inputs.append({
            "stage": source_id, "schema": schema_text(source.schema),
            "partitions": list(stage.partitions_read(source, task)),
            "sources": [{"executor": o.executor, "address": addresses.get(o.executor, ""),
                         "stage_attempt": o.stage_attempt, "map_task": o.partition,
                         "attempt": o.attempt,
                         "work_dir": work_dirs.get(o.executor, "")}
                        for o in outputs.get(source_id, ())],
        })
    return {
        "plan": as_text(stage.plan),
        "schema": schema_text(stage.schema),
        "scans": [{"name": s.name, "table": s.table, "schema": schema_text(s.schema),
                   "files": list(s.files_for(task, stage.tasks))} for s in stage.scans],
        "inputs": inputs,
        "output": {"keys": list(stage.output.keys), "partitions": stage.output.partitions},
        "tasks": stage.tasks,
    }


def _scan_name(value: object) -> str:
    name = str(value)
    if not re.fullmatch(r"__scan_[0-9]{1,6}", name):
        raise ValueError(f"bad scan name {name[:40]!r}")
    return name


def decode_stage_task(body: dict[str, Any]) -> StageTaskMessage:
    """A stage task from its JSON body; KeyError, TypeError or ValueError if malformed."""
    scans = tuple(
        ScanSpec(_scan_name(s["name"]), str(s["table"]), tuple(str(f) for f in s["files"]),
                 schema_from_text(s["schema"]), split=False)
        for s in body["scans"]
    )
    inputs = tuple(
        StageInput(StageId(int(i["stage"])), schema_from_text(i["schema"]),
                   tuple(int(p) for p in i["partitions"]),
                   tuple(InputSource(ExecutorId(str(s["executor"])), str(s["address"]),
                                     Attempt(int(s["stage_attempt"])), int(s["map_task"]),
                                     Attempt(int(s["attempt"])), str(s["work_dir"]))
                         for s in i["sources"]))
        for i in body["inputs"]
    )
    output = body["output"]
    return StageTaskMessage(from_text(body["plan"]), schema_from_text(body["schema"]), scans,
                            inputs, tuple(int(k) for k in output["keys"]),
                            int(output["partitions"]), int(body["tasks"]))
