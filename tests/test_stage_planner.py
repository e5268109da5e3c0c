"""The stage planner on real plans: DataFusion's Substrait of queries over the catalog."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from catalog import IcebergCatalog
from engine import EngineConfig, SqlEngine
from engine.distributed.ids import StageId
from engine.distributed.planner import ExchangeKind, StageDef, StagePlan
from engine.distributed.stage_task import StageContexts, StageTask
from engine.distributed.stages import (
    DistributedQuery,
    NotDistributable,
    ResolvedQueries,
    plan_distributed,
    resolve_distributed,
)
from tests.reference import duckdb_over_catalog, tpch_queries


@pytest.fixture(scope="module")
def engine(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[SqlEngine]:
    """Over a copy of the demo warehouse, with a table written in three commits."""
    warehouse = tmp_path_factory.mktemp("planner") / "warehouse"
    shutil.copytree(demo_warehouse, warehouse)
    running = SqlEngine(IcebergCatalog.embedded(str(warehouse)),
                        EngineConfig(default_schema="tpch"))
    session = running.session()
    session.execute("CREATE TABLE public.three_files (k BIGINT, v BIGINT)")
    for start in (0, 100, 200):
        session.execute(f"INSERT INTO public.three_files SELECT value % 7, value "
                        f"FROM generate_series({start}, {start + 99})")
    yield running
    running.close()


def _plan(engine: SqlEngine, text: str, partitions: int = 4, broadcast_limit: int = 0
          ) -> StagePlan:
    return plan_distributed(engine, text, "tpch", None, partitions, broadcast_limit)


def test_joins_and_group_bys_are_hash_exchanges(engine: SqlEngine) -> None:
    plan = _plan(engine, "SELECT o_orderpriority, count(*) FROM orders JOIN lineitem "
                         "ON l_orderkey = o_orderkey GROUP BY o_orderpriority")
    *upstream, result = plan.stages
    assert result.tasks == 1 and result.output.kind is ExchangeKind.GATHER
    scans = [s for s in upstream if s.scans]
    assert sorted(s.scans[0].table for s in scans) == ["tpch.lineitem", "tpch.orders"]
    # Both join inputs go by the join key, each into 4 partitions.
    assert all(s.output == scans[0].output for s in scans)
    assert scans[0].output.kind is ExchangeKind.HASH and scans[0].output.partitions == 4
    join = next(s for s in upstream if "join" in s.summary)
    assert join.tasks == 4 and set(join.inputs) == {s.stage for s in scans}
    # Every stage reads only stages before it.
    seen: set[int] = set()
    for stage in plan.stages:
        assert set(stage.inputs) <= seen
        seen.add(stage.stage)


def test_aggregates_run_in_two_phases(engine: SqlEngine) -> None:
    """A partial aggregate before the exchange, the final one after it: hashed on the
    group keys when a join reads the groups, gathered straight into the one task that
    reads them all otherwise."""
    joined = _plan(engine, "SELECT n_name, s, c FROM (SELECT k, avg(v) AS s, count(*) AS c "
                           "FROM public.three_files GROUP BY k) JOIN nation ON k = n_nationkey")
    partial = joined.stages[0]
    assert partial.scans and partial.summary == "aggregate" and partial.tasks == 3
    assert partial.output.kind is ExchangeKind.HASH and partial.output.keys == (0,)
    # avg travels as a sum and a count
    assert [f.name for f in partial.schema] == ["c0", "c1", "c2", "c3"]
    final = next(s for s in joined.stages if partial.stage in s.inputs)
    assert "aggregate" in final.summary and final.tasks == 4
    grouped = _plan(engine, "SELECT k, avg(v), count(*) FROM public.three_files GROUP BY k")
    assert [(s.tasks, s.output.kind) for s in grouped.stages] == [
        (3, ExchangeKind.GATHER), (1, ExchangeKind.GATHER)]
    assert grouped.stages[1].summary == "aggregate"
    # One task over the whole input: the aggregate runs there, in one stage.
    assert len(_plan(engine, "SELECT l_returnflag, count(*) FROM lineitem "
                             "GROUP BY l_returnflag").stages) == 1
    ungrouped = _plan(engine, "SELECT count(*), max(v) FROM public.three_files")
    assert [s.tasks for s in ungrouped.stages] == [3, 1]
    # median cannot be split: the rows themselves are shuffled.
    first = _plan(engine, "SELECT k, median(v) FROM public.three_files GROUP BY k").stages[0]
    assert first.summary == "scan" and first.output.kind is ExchangeKind.HASH


def test_small_join_inputs_are_broadcast(engine: SqlEngine) -> None:
    text = ("SELECT n_name, sum(v) FROM public.three_files JOIN nation ON k = n_nationkey "
            "GROUP BY n_name")
    shuffled = _plan(engine, text)
    assert sum(s.output.kind is ExchangeKind.HASH for s in shuffled.stages) == 2
    broadcast = _plan(engine, text, broadcast_limit=10 << 20)
    first = broadcast.stages[0]
    # The three_files tasks each read all of nation and join it there: no shuffle of
    # either input; the partial aggregates go to the result's task.
    assert first.tasks == 3 and "join" in first.summary
    assert sorted((s.table, s.split) for s in first.scans) == [
        ("public.three_files", True), ("tpch.nation", False)]
    assert sum(s.output.kind is ExchangeKind.HASH for s in broadcast.stages) == 0
    # A full outer join cannot broadcast either side.
    outer = _plan(engine, "SELECT count(*) FROM public.three_files FULL JOIN nation "
                          "ON k = n_nationkey", broadcast_limit=10 << 20)
    assert sum(s.output.kind is ExchangeKind.HASH for s in outer.stages) == 2


def test_aggregate_inputs_are_reduced_by_a_small_filtered_read(engine: SqlEngine) -> None:
    """Only the rows of keys that can match are grouped: the filtered nation read goes
    whole into the tasks of the aggregate's first stage, a semi join before grouping."""
    text = ("SELECT n_name, total FROM nation JOIN (SELECT k, sum(v) AS total "
            "FROM public.three_files GROUP BY k) t ON n_nationkey = k WHERE n_regionkey = 1")

    def grouping(plan: StagePlan) -> StageDef:
        return next(s for s in plan.stages if any(c.table == "public.three_files"
                                                  for c in s.scans))

    reduced = grouping(_plan(engine, text, broadcast_limit=10 << 20))
    assert reduced.tasks == 3 and "join" in reduced.summary
    assert sorted((s.table, s.split) for s in reduced.scans) == [
        ("public.three_files", True), ("tpch.nation", False)]
    # Without broadcasts, or where the join keeps unmatched groups, all rows are grouped.
    assert [s.table for s in grouping(_plan(engine, text)).scans] == ["public.three_files"]
    outer = text.replace("FROM nation JOIN", "FROM nation FULL JOIN")
    assert [s.table for s in grouping(_plan(engine, outer, broadcast_limit=10 << 20)).scans
            ] == ["public.three_files"]


def test_top_k_runs_in_every_upstream_task(engine: SqlEngine) -> None:
    plan = _plan(engine, "SELECT k, sum(v) AS q FROM public.three_files "
                         "GROUP BY k ORDER BY q DESC LIMIT 3")
    pushed = [s for s in plan.stages[:-1] if "fetch" in s.summary]
    assert len(pushed) == 1
    assert pushed[0].tasks == 4 and pushed[0].output.kind is ExchangeKind.GATHER
    assert {"sort", "fetch"} <= set(plan.stages[-1].summary.split(", "))


def test_scans_split_by_file(engine: SqlEngine) -> None:
    plan = _plan(engine, "SELECT k, sum(v) FROM public.three_files GROUP BY k")
    (scan_stage,) = [s for s in plan.stages if s.scans]
    (scan,) = scan_stage.scans
    assert scan.split and len(scan.files) == 3 and scan_stage.tasks == 3
    assert {f for task in range(3) for f in scan.files_for(task, 3)} == set(scan.files)
    # A stage that needs every row gathers it; only two tasks for two files at most.
    assert _plan(engine, "SELECT count(*) FROM public.three_files", 2).stages[0].tasks == 2


def test_subquery_reads_see_the_whole_table(engine: SqlEngine) -> None:
    text = ("SELECT k FROM public.three_files "
            "WHERE v > (SELECT avg(v) FROM public.three_files)")
    (stage,) = [s for s in _plan(engine, text, broadcast_limit=10 << 20).stages if s.scans]
    assert stage.tasks == 3
    # The filter's rows are split over the tasks; its scalar subquery reads everything
    # in every task (DESIGN §6: a subquery that saw only the slice broke q22).
    assert sorted((s.table, s.split) for s in stage.scans) == [
        ("public.three_files", False), ("public.three_files", True)]
    # Past the broadcast limit the subquery is not repeated in every task: the filter
    # gathers its rows into one task (TPC-H q15 read lineitem whole in each of 4).
    gathered = _plan(engine, text, broadcast_limit=0).stages
    assert [s.tasks for s in gathered] == [3, 1]
    assert gathered[1].scans[0].table == "public.three_files" and not gathered[1].scans[0].split


def test_not_in_over_nullable_columns_is_not_cut(engine: SqlEngine) -> None:
    with pytest.raises(NotDistributable, match="NOT IN"):
        _plan(engine, "SELECT n_nationkey FROM nation WHERE n_nationkey NOT IN "
                      "(SELECT k FROM public.three_files)")
    # Over NOT NULL columns it is a plain anti join, and is cut.
    assert len(_plan(engine, "SELECT o_orderkey FROM orders WHERE o_custkey NOT IN "
                             "(SELECT c_custkey FROM customer)").stages) > 1


def _hash_exchanges(plan: StagePlan) -> int:
    return sum(s.output.kind is ExchangeKind.HASH for s in plan.stages)


def test_hashed_rows_are_not_shuffled_again_on_the_same_keys(engine: SqlEngine) -> None:
    # Join on orderkey, then group by the right side's orderkey and more: an inner
    # join's output is hashed on both key columns, and a group-by on a superset of the
    # keys finds each group in one task. Two exchanges (the join inputs), not three.
    grouped = _plan(engine, "SELECT l_orderkey, o_orderdate, sum(l_quantity) FROM orders "
                            "JOIN lineitem ON o_orderkey = l_orderkey "
                            "GROUP BY l_orderkey, o_orderdate")
    assert _hash_exchanges(grouped) == 2
    assert "join, aggregate" in grouped.stages[-2].summary
    # A second join on the same key (through a projection and a semi join) reuses it.
    chained = _plan(engine, "SELECT o_orderkey, c_name FROM customer JOIN orders "
                            "ON c_custkey = o_custkey JOIN lineitem ON l_orderkey = o_orderkey "
                            "WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem "
                            "GROUP BY l_orderkey HAVING sum(l_quantity) > 200)")
    assert _hash_exchanges(chained) == 5  # customer, orders; lineitem; subquery (2-phase)
    assert sum("join" in s.summary for s in chained.stages) == 2


def test_outer_join_sides_padded_with_nulls_are_shuffled(engine: SqlEngine) -> None:
    # A left join's right keys are NULL for unmatched rows, in whichever task their left
    # row was: grouping on them needs a shuffle, grouping on the left keys does not. (The
    # groups are joined on, so they are not simply gathered into one task.)
    def grouped(join: str, key: str) -> StagePlan:
        return _plan(engine, f"SELECT g.k, g.n, n_name FROM (SELECT {key} AS k, count(*) AS n "
                             f"FROM customer {join} JOIN orders ON c_custkey = o_custkey "
                             f"GROUP BY {key}) g JOIN nation ON g.k = n_nationkey")
    # customer, orders, nation; and the partial aggregate where it must be shuffled
    assert _hash_exchanges(grouped("LEFT", "c_custkey")) == 3
    assert _hash_exchanges(grouped("LEFT", "o_custkey")) == 4
    assert _hash_exchanges(grouped("FULL", "c_custkey")) == 4


def test_adaptive_planning_broadcasts_a_join_input_found_small(engine: SqlEngine) -> None:
    """The filtered orders run first as a probe; written small, every join task reads
    them whole and lineitem is not shuffled at all; written large, both are hashed."""
    text = ("SELECT o_orderpriority, count(*) FROM orders JOIN lineitem "
            "ON l_orderkey = o_orderkey WHERE o_orderdate < DATE '1993-01-01' "
            "GROUP BY o_orderpriority")
    limit = 1000  # below the files of both tables: neither is broadcast by file size
    query = resolve_distributed(engine, text, "tpch", None, 4, limit)
    assert query.plan().probe is None  # planned once, from file sizes: no probe
    first = query.plan({})
    probe = first.stages[-1]
    assert first.probe == probe.stage and probe.output.kind is ExchangeKind.HASH
    assert [s.table for s in probe.scans] == ["tpch.orders"] and "filter" in probe.summary

    small = query.plan({probe.stage: limit})
    assert small.probe is None and small.stages[:len(first.stages)] == first.stages
    join = next(s for s in small.stages if probe.stage in s.inputs)
    assert join.whole_inputs == {probe.stage}
    assert [s.table for s in join.scans] == ["tpch.lineitem"]
    assert join.partitions_read(probe, 2) == (0, 1, 2, 3)
    assert f"stage {probe.stage} (whole)" in small.explain()

    large = query.plan({probe.stage: limit + 1})
    join = next(s for s in large.stages if probe.stage in s.inputs)
    assert not join.whole_inputs and not join.scans
    assert join.partitions_read(probe, 2) == (2,)
    lineitem = next(s for s in large.stages if s.stage in join.inputs and s != probe)
    assert [s.table for s in lineitem.scans] == ["tpch.lineitem"]
    assert lineitem.output == probe.output
    # Replans are kept by the sizes they were made from: the same sizes, the same plan.
    assert query.plan({probe.stage: limit}) is small
    assert query.plan({probe.stage: limit + 1}) is large
    # Broadcast off: nothing to learn, so no probe.
    assert resolve_distributed(engine, text, "tpch", None, 4, 0).plan({}).probe is None


def test_adaptive_planning_reduces_the_other_input_of_a_semi_join(engine: SqlEngine) -> None:
    """A semi join's left input cannot be broadcast (each task would keep its rows once
    per task that matches), but found small it filters the right input before that is
    shuffled: the lineitem stage semi-joins the probe's keys, read whole there."""
    text = ("SELECT count(*) FROM orders WHERE o_orderdate < DATE '1993-01-01' AND EXISTS "
            "(SELECT 1 FROM lineitem WHERE l_orderkey = o_orderkey AND l_quantity > 10)")
    query = resolve_distributed(engine, text, "tpch", None, 4, 1000)
    probe = query.plan({}).stages[-1]
    assert [s.table for s in probe.scans] == ["tpch.orders"]
    reduced = query.plan({probe.stage: 1000})
    lineitem = next(s for s in reduced.stages if s.scans and s.scans[0].table == "tpch.lineitem")
    assert lineitem.whole_inputs == {probe.stage} and "join" in lineitem.summary
    join = next(s for s in reduced.stages if lineitem.stage in s.inputs)
    assert probe.stage in join.inputs and not join.whole_inputs
    # Found large, the lineitem rows are shuffled as they are.
    plain = query.plan({probe.stage: 1001})
    lineitem = next(s for s in plain.stages if s.scans and s.scans[0].table == "tpch.lineitem")
    assert not lineitem.inputs and "join" not in lineitem.summary


def test_resolved_queries_are_kept_until_their_tables_change(engine: SqlEngine) -> None:
    resolved = ResolvedQueries()

    def resolve(text: str) -> DistributedQuery:
        return resolved.resolve(engine, text, "tpch", None, 4, 0)

    text = "SELECT k, count(*) FROM public.scratch_rows GROUP BY k"
    session = engine.session()
    session.execute("CREATE TABLE public.scratch_rows (k BIGINT)")
    session.execute("INSERT INTO public.scratch_rows VALUES (1), (2)")
    first = resolve(text)
    assert resolve(text) is first
    files = first.plan().stages[0].scans[0].files
    session.execute("INSERT INTO public.scratch_rows VALUES (3)")
    changed = resolve(text)
    assert changed is not first
    assert len(changed.plan().stages[0].scans[0].files) == len(files) + 1
    # The clock is read when planning: such queries are never kept.
    clocked = "SELECT k FROM public.scratch_rows WHERE now() > TIMESTAMP '2000-01-01'"
    assert resolve(clocked) is not resolve(clocked)
    # A name the query defines for itself (WITH) is no table: the query is kept all the
    # same, and changes with the table under it.
    with_text = "WITH totals AS (SELECT k FROM public.scratch_rows) SELECT count(*) FROM totals"
    kept = resolve(with_text)
    assert resolve(with_text) is kept
    session.execute("INSERT INTO public.scratch_rows VALUES (4)")
    assert resolve(with_text) is not kept


def test_stage_scans_read_strings_as_views_where_the_plan_takes_them(
        engine: SqlEngine, tmp_path: Path) -> None:
    """Each stage of TPC-H q7 plans in a worker's contexts; its scans read strings as
    views, except in the stage DataFusion cannot plan so (a join of two nation scans
    grouped by both names), which reads plain strings."""
    text = tpch_queries(duckdb_over_catalog(engine.catalog))[7]
    # customer and nation broadcast into the join of the lineitem and orders shuffles
    stages = resolve_distributed(engine, text, "tpch", None, 2, 200_000).plan().stages
    by_id = {stage.stage: stage for stage in stages}
    contexts = StageContexts()
    read_as: dict[StageId, set[pa.DataType]] = {}
    for stage in stages:
        task = StageTask(stage.plan, stage.schema, stage.scans,
                         {i: (by_id[i].schema, ()) for i in stage.inputs}, tmp_path, 2)
        with contexts.physical_plan(EngineConfig(), task) as (ctx, plan):
            assert plan.partition_count >= 1
            read_as[stage.stage] = {field.type for scan in stage.scans
                                    for field in ctx.table(scan.name).schema()
                                    if field.name.endswith("name")}
    joined = next(s.stage for s in stages if len(s.scans) == 3 and s.inputs)
    assert read_as[joined] == {pa.string()}
    assert all(read_as[s.stage] == {pa.string_view()} for s in stages
               if s.stage != joined and any(f.name.endswith("name") for scan in s.scans
                                            for f in scan.schema))
