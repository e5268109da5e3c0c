"""A stage task planned where it runs: exchange inputs as memory-mapped in-memory tables."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datafusion import DataFrame, SessionContext
from datafusion import substrait as ds_substrait

from engine import EngineConfig
from engine.distributed.ids import StageId
from engine.distributed.planner import ScanSpec, input_name
from engine.distributed.stage_task import StageContexts, StageTask, linked_files, sweep_links
from engine.errors import DataUnavailable


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
    }, tmp_path / "links", target_partitions=1)
    with StageContexts().frame(EngineConfig(), StageTask.decode(task.encode())) as (_, frame):
        physical = frame.execution_plan().display_indent()
        # The 20-row side is the hash table (a semi join swapped to build on its right
        # input), not the 100,000-row one as the plan's order alone would have it.
        assert "join_type=RightSemi" in physical, physical
        assert sorted(frame.to_arrow_table().column("c0").to_pylist()) == list(
            range(0, 100_000, 5_000))


def _scan_task(tmp_path: Path, files: list[Path], schema: pa.Schema) -> StageTask:
    """A task summing column `a` of `files`, read as the scan `__scan_0`."""
    scratch_ctx = SessionContext()
    scratch_ctx.register_parquet("__scan_0", str(files[0]), schema=schema)
    logical = scratch_ctx.sql("SELECT sum(a) AS total FROM __scan_0").optimized_logical_plan()
    plan = ds_substrait.Producer.to_substrait_plan(logical, scratch_ctx).encode()
    scan = ScanSpec("__scan_0", "t", tuple(str(f) for f in files), schema, split=False)
    return StageTask(plan, pa.schema([pa.field("total", pa.int64())]), (scan,), {},
                     tmp_path / "links", target_partitions=2)


def _parquet(path: Path, values: list[int]) -> Path:
    pq.write_table(pa.table({"a": pa.array(values, pa.int64())}), path)
    return path


def test_tasks_over_the_same_files_share_a_context_and_a_link_folder(tmp_path: Path) -> None:
    schema = pa.schema([pa.field("a", pa.int64())])
    first = _parquet(tmp_path / "1.parquet", [1, 2, 3])
    second = _parquet(tmp_path / "2.parquet", [10, 20])
    contexts = StageContexts()

    def run(files: list[Path]) -> tuple[SessionContext, int]:
        task = StageTask.decode(_scan_task(tmp_path, files, schema).encode())
        with contexts.frame(EngineConfig(), task) as (ctx, frame):
            total = frame.to_arrow_table().column("total")[0].as_py()
        # The task's tables are gone once it ends; the context stays for the next task.
        assert not ctx.table_exist("__scan_0")
        return ctx, total

    ctx, total = run([first, second])
    assert total == 36
    assert run([first, second]) == (ctx, 36)
    assert run([second]) == (ctx, 30)
    # One folder per distinct list of files, reused by the task that read the same.
    folders = sorted((tmp_path / "links").iterdir())
    assert len(folders) == 2
    assert sorted(len(list(f.iterdir())) for f in folders) == [1, 2]
    assert {p.resolve() for f in folders for p in f.iterdir()} == {first, second}


def test_a_missing_scan_file_fails_the_task_and_leaves_the_context_clean(
        tmp_path: Path) -> None:
    schema = pa.schema([pa.field("a", pa.int64())])
    present = _parquet(tmp_path / "1.parquet", [1])
    task = _scan_task(tmp_path, [present, tmp_path / "gone.parquet"], schema)
    contexts = StageContexts()
    with (pytest.raises(DataUnavailable, match=r"gone\.parquet is missing"),
          contexts.frame(EngineConfig(), task)):
        pass
    with contexts.frame(EngineConfig(), _scan_task(tmp_path, [present], schema)) as (_, frame):
        assert frame.to_arrow_table().column("total").to_pylist() == [1]


def test_sweep_removes_link_folders_unused_for_a_while(tmp_path: Path) -> None:
    data = _parquet(tmp_path / "1.parquet", [1])
    links = tmp_path / "links"
    old = linked_files([data], links)
    half_made = links / ".abc.def"
    half_made.mkdir()
    long_ago = time.time() - 7200
    for folder in (old, half_made):
        os.utime(folder, (long_ago, long_ago))
    fresh = linked_files([data, data], links)
    assert sweep_links(links, 3600.0, time.time()) == 2
    assert list(links.iterdir()) == [fresh]
    # A folder in use again is touched, so the sweep keeps it.
    os.utime(fresh, (long_ago, long_ago))
    assert linked_files([data, data], links) == fresh
    assert sweep_links(links, 3600.0, time.time()) == 0


def test_a_table_kept_for_files_is_not_used_for_another_schema_of_them(
        tmp_path: Path) -> None:
    data = _parquet(tmp_path / "1.parquet", [1, 2])
    narrow = pa.schema([pa.field("a", pa.int64())])
    wide = pa.schema([pa.field("a", pa.int64()), pa.field("b", pa.string())])  # added later
    contexts = StageContexts()
    with contexts.frame(EngineConfig(), _scan_task(tmp_path, [data], narrow)) as (_, frame):
        assert frame.to_arrow_table().column("total").to_pylist() == [3]
    scratch_ctx = SessionContext()
    scratch_ctx.register_parquet("__scan_0", str(data), schema=wide)
    logical = scratch_ctx.sql("SELECT count(b) AS named FROM __scan_0").optimized_logical_plan()
    task = StageTask(ds_substrait.Producer.to_substrait_plan(logical, scratch_ctx).encode(),
                     pa.schema([pa.field("named", pa.int64())]),
                     (ScanSpec("__scan_0", "t", (str(data),), wide, split=False),), {},
                     tmp_path / "links", target_partitions=2)
    with contexts.frame(EngineConfig(), task) as (_, frame):
        assert frame.to_arrow_table().column("named").to_pylist() == [0]


def test_a_worker_keeps_a_context_per_configuration_and_a_few_at_most() -> None:
    """Physical plans from the server run in the kept context of their configuration;
    configurations differ by rows per batch, so only the most recently used few stay."""
    contexts = StageContexts()
    first = contexts.context(EngineConfig(batch_size=1024))
    assert contexts.context(EngineConfig(batch_size=1024)) is first
    assert contexts.context(EngineConfig(batch_size=2048)) is not first
    for size in range(1, 9):
        contexts.context(EngineConfig(batch_size=size))
    assert contexts.context(EngineConfig(batch_size=1024)) is not first
    ctx = contexts.context(EngineConfig(batch_size=7))
    assert ctx.sql("SELECT 41 + 1 AS n").to_pydict() == {"n": [42]}


def test_a_stage_that_cannot_plan_over_views_plans_its_next_tasks_plain_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage plan that fails over string views (as DataFusion's type coercion does for
    some) is planned over plain strings; the worker remembers it, so the stage's next
    tasks skip the attempt over views, while other stages still try views first."""
    schema = pa.schema([pa.field("a", pa.int64())])
    files = [_parquet(tmp_path / "1.parquet", [1, 2])]
    tries: list[bool] = []
    plain_frame = StageContexts.frame

    @contextmanager
    def frame(self: StageContexts, config: EngineConfig, task: StageTask, views: bool = False
              ) -> Iterator[tuple[SessionContext, DataFrame]]:
        tries.append(views)
        if views and task.target_partitions == 2:
            raise ValueError("cannot be planned over views")
        with plain_frame(self, config, task, views) as made:
            yield made

    monkeypatch.setattr(StageContexts, "frame", frame)
    contexts = StageContexts()
    failing = _scan_task(tmp_path, files, schema)
    scratch_ctx = SessionContext()
    scratch_ctx.register_parquet("__scan_0", str(files[0]), schema=schema)
    logical = scratch_ctx.sql("SELECT max(a) AS total FROM __scan_0").optimized_logical_plan()
    other = replace(failing, target_partitions=1,
                    plan=ds_substrait.Producer.to_substrait_plan(logical, scratch_ctx).encode())
    for task in (failing, failing, other):
        with contexts.physical_plan(EngineConfig(), task) as (_, plan):
            assert "total" in plan.display_indent()
    assert tries == [True, False, False, True]
