"""A stage task planned where it runs: exchange inputs as memory-mapped in-memory tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from datafusion import SessionContext
from datafusion import substrait as ds_substrait

from engine import EngineConfig
from engine.distributed.ids import StageId
from engine.distributed.planner import input_name
from engine.distributed.stage_task import StageTask, stage_frame


def _ipc_file(path: Path, table: pa.Table) -> Path:
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table, max_chunksize=10_000)
    return path


def test_stage_inputs_have_row_counts_so_joins_build_on_the_small_side(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("c0", pa.int64()), pa.field("c1", pa.int64())])
    big = pa.table({"c0": range(100_000), "c1": range(100_000)}, schema=schema)
    small = pa.table({"c0": range(0, 100_000, 5_000), "c1": range(20)}, schema=schema)
    # The stage's Substrait, as the coordinator makes it: inputs read by their names.
    scratch_ctx = SessionContext()
    for stage, table in ((1, big), (2, small)):
        scratch_ctx.register_record_batches(input_name(StageId(stage)), [table.to_batches()])
    logical = scratch_ctx.sql("SELECT c0, c1 FROM __stage_1 WHERE c0 IN "
                              "(SELECT c0 FROM __stage_2)").optimized_logical_plan()
    plan = ds_substrait.Producer.to_substrait_plan(logical, scratch_ctx).encode()
    task = StageTask(plan, schema, (), {
        StageId(1): (schema, (_ipc_file(tmp_path / "big.arrows", big),)),
        StageId(2): (schema, (_ipc_file(tmp_path / "small.arrows", small),)),
    }, tmp_path / "scratch", target_partitions=1)
    _, frame = stage_frame(EngineConfig(), StageTask.decode(task.encode()))
    physical = frame.execution_plan().display_indent()
    # The 20-row side is the hash table (a semi join swapped to build on its right input),
    # not the 100,000-row one as the plan's order alone would have it.
    assert "join_type=RightSemi" in physical, physical
    assert sorted(frame.to_arrow_table().column("c0").to_pylist()) == list(range(0, 100_000,
                                                                                  5_000))
