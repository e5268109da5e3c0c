"""The stage planner: cuts a query's optimized plan into stages joined by exchanges.

The plan travels as Substrait (DESIGN §6: the round trip keeps all 22 TPC-H queries right,
where SQL unparsing does not). DataFusion writes the optimized logical plan as Substrait,
the cut edits its protobuf, and executors read each stage back with DataFusion.

Cuts: equi-join inputs are hash-partitioned on the join keys, grouped aggregate inputs on
the group keys; sorts, limits, windows, set operations, cross joins and ungrouped
aggregates gather their input into one task (a sort under a limit is first applied in
every upstream task: top-k). Table reads are renamed to private names bound to the
query's snapshot files, and a stage's main read is split over its tasks by file; reads
inside subquery expressions always see the whole table (DESIGN §6: q22).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import sys
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pyarrow as pa
from datafusion import SessionContext
from datafusion import substrait as ds_substrait
from datafusion.catalog import Table
from google.protobuf.message import Message
from substrait import algebra_pb2, plan_pb2

from engine.arrow_types import plain_schema, plain_type
from engine.distributed.ids import StageId
from engine.text_cache import by_short_text

_JOIN_KEY_FUNCTIONS = {"equal", "is_not_distinct_from"}
_SINGLE_INPUT = ("filter", "fetch", "sort", "project")


class ExchangeKind(enum.Enum):
    HASH = "hash"  # rows go to partition pmod(xxhash64(keys), partitions)
    GATHER = "gather"  # every row to partition 0, read by a single task
    BROADCAST = "broadcast"  # every row to partition 0, read whole by every task


@dataclass(frozen=True)
class Exchange:
    kind: ExchangeKind
    partitions: int
    keys: tuple[int, ...] = ()  # output column positions


@dataclass(frozen=True)
class ScanSpec:
    """A catalog table read in a stage, bound to the files of the query's snapshot."""

    name: str  # the private name the stage plan reads
    table: str  # for EXPLAIN
    files: tuple[str, ...]
    schema: pa.Schema
    split: bool  # task i of n reads files[i::n]; otherwise every task reads all
    bytes: int | None = None  # the files' total size, where known

    def files_for(self, task: int, tasks: int) -> tuple[str, ...]:
        return self.files[task::tasks] if self.split else self.files


@dataclass(frozen=True)
class StageDef:
    stage: StageId
    tasks: int
    plan: bytes  # a Substrait Plan whose one relation is the stage
    inputs: tuple[StageId, ...]  # read as the tables input_name(stage)
    output: Exchange
    schema: pa.Schema  # of the stage's output; columns c0..cN except for the result
    scans: tuple[ScanSpec, ...]
    summary: str
    whole_inputs: frozenset[StageId] = frozenset()  # read in all their partitions

    def partitions_read(self, source: StageDef, task: int) -> tuple[int, ...]:
        """The partitions of `source`'s map outputs that this stage's `task` reads."""
        if source.stage in self.whole_inputs:
            return tuple(range(source.output.partitions))
        return (task,) if source.output.kind is ExchangeKind.HASH else (0,)


@dataclass(frozen=True)
class StagePlan:
    stages: tuple[StageDef, ...]  # dependencies first; the last stage yields the result
    # Set on a plan cut short (adaptive planning): the last stage is a join input whose
    # size decides the join's strategy; run these stages, then plan again knowing it.
    probe: StageId | None = None

    def explain(self, notes: dict[StageId, str] | None = None) -> str:
        """One line per stage; `notes` (e.g. metrics) are appended to their stage's line."""
        lines = []
        for stage in self.stages:
            if stage is self.stages[-1]:
                target = "result (gather to the coordinator)"
            elif stage.output.kind is ExchangeKind.HASH:
                keys = ", ".join(f"c{k}" for k in stage.output.keys)
                target = f"hash({keys}) into {stage.output.partitions} partitions"
            elif stage.output.kind is ExchangeKind.BROADCAST:
                target = "broadcast to every task of the reading stage"
            else:
                target = "gather into 1 partition"
            reads = ", ".join([f"stage {i}" + (" (whole)" if i in stage.whole_inputs else "")
                               for i in stage.inputs]
                              + [_scan_text(s) for s in stage.scans])
            note = (notes or {}).get(stage.stage)
            lines.append(f"Stage {stage.stage}: {stage.tasks} task(s) [{stage.summary}] "
                         f"reads {reads or 'nothing'} -> {target}"
                         + (f"; {note}" if note else ""))
        return "\n".join(lines)


def _scan_text(scan: ScanSpec) -> str:
    how = "split by file" if scan.split else "whole"
    return f"{scan.table} ({len(scan.files)} file(s), {how})"


_INPUT_PREFIX = "__stage_"


def input_name(stage: StageId) -> str:
    return f"{_INPUT_PREFIX}{stage}"


def _input_stage(name: str) -> StageId:
    """The stage whose output the input `name` (from input_name) reads."""
    return StageId(int(name.removeprefix(_INPUT_PREFIX)))


def exchange_schema(schema: pa.Schema) -> pa.Schema:
    """Exchanged data: columns by position (c0, c1...), all nullable, plain types."""
    return pa.schema([pa.field(f"c{i}", plain_type(f.type)) for i, f in enumerate(schema)])


@dataclass
class _Dist:
    """How the rows a relation produces are spread over its stage's tasks."""

    tasks: int
    # Hash-partitioned into `tasks` on each of these column tuples alike (after an inner
    # join, on its left keys and on its right keys: equal values of one type).
    keyings: tuple[tuple[int, ...], ...] = ()

    def through(self, sources: list[int | None]) -> _Dist:
        """After a relation whose output column j is its input column sources[j]."""
        kept = tuple(tuple(sources.index(k) for k in keys) for keys in self.keyings
                     if all(k in sources for k in keys))
        return _Dist(self.tasks, kept)

    def emitted(self, common: algebra_pb2.RelCommon) -> _Dist:
        """After a relation's output mapping."""
        if not common.HasField("emit"):
            return self
        return self.through(list(common.emit.output_mapping))


_SINGLE = _Dist(1)


@dataclass(frozen=True)
class TableFiles:
    table: str
    files: tuple[str, ...]
    schema: pa.Schema
    bytes: int | None = None


@dataclass
class _Cut:
    plan: plan_pb2.Plan
    ctx: SessionContext  # resolves private scan names and stage inputs, for schemas
    tables: Callable[[list[str]], TableFiles]
    partitions: int
    functions: dict[int, str]
    table_from: Callable[[pa.Schema], Table]
    broadcast_limit: int
    # Adaptive planning: bytes written by the probe stages run so far (None: plan once,
    # from file sizes alone).
    observed: dict[StageId, int] | None = None
    stages: list[StageDef] = field(default_factory=list)
    scans: dict[str, ScanSpec] = field(default_factory=dict)
    estimates: dict[StageId, int | None] = field(default_factory=dict)  # output bytes
    whole_reads: set[str] = field(default_factory=set)  # stage inputs read whole
    schemas: PlanSchemas = field(default_factory=dict)


# Schemas of partial plans by the digest of their bytes.
PlanSchemas = dict[bytes, pa.Schema]


class _Probe(Exception):
    """Planning stops here until `stage` has run and its output size is known."""

    def __init__(self, stage: StageId) -> None:
        super().__init__(stage)
        self.stage = stage


def plan_stages(
    plan_bytes: bytes,
    ctx: SessionContext,
    tables: Callable[[list[str]], TableFiles],
    partitions: int,
    table_from: Callable[[pa.Schema], Table],
    broadcast_limit: int = 0,
    observed: dict[StageId, int] | None = None,
    schemas: PlanSchemas | None = None,
) -> StagePlan:
    """Cut the Substrait `plan_bytes` into stages of at most `partitions` tasks.

    `tables` maps a Substrait table name to its snapshot files; `ctx` is a scratch
    context where the cut registers tables made by `table_from` to learn schemas. A join
    input that reads at most `broadcast_limit` bytes of files is broadcast.

    With `observed` (adaptive planning), a join of two inputs too big to broadcast by
    their files, one of which filters or aggregates its rows, is planned in two
    steps: the plan returned ends at that input's stage (`probe`); once it has run, plan
    again with its output size in `observed`: at most `broadcast_limit` bytes, it is
    broadcast and the other input is not shuffled at all (or, where the join cannot
    broadcast it, the other input is first reduced to rows with matching keys). The
    stages before the probe come out the same each time. `schemas` keeps the schemas of
    partial plans from one cut of the query to the next.
    """
    plan = plan_pb2.Plan.FromString(_with_read_filters_lifted(plan_bytes))
    functions = {
        ext.extension_function.function_anchor: ext.extension_function.name.split(":")[0]
        for ext in plan.extensions if ext.HasField("extension_function")
    }
    cut = _Cut(plan, ctx, tables, partitions, functions, table_from, broadcast_limit, observed,
               schemas=schemas if schemas is not None else {})
    root = plan.relations[0].root
    for read in _main_reads(root.input):
        _bind_read(cut, read, split=True)
    for message in _messages(root.input):  # the rest sit in subquery expressions
        if (isinstance(message, algebra_pb2.ReadRel) and message.HasField("named_table")
                and not message.named_table.names[-1].startswith("__")):
            _bind_read(cut, message, split=False)
    if broadcast_limit > 0:
        _reduce_aggregate_inputs(cut, root.input)
    try:
        rel, dist = _visit(cut, root.input, gathered=True)
    except _Probe as probe:
        return StagePlan(tuple(cut.stages), probe=probe.stage)
    rel = _gather(cut, rel, dist)
    result = _stage_plan(cut.plan, rel, list(root.names))
    _add_stage(cut, result, rel, 1, Exchange(ExchangeKind.GATHER, 1),
               plain_schema(_schema_of(cut, result)))
    return StagePlan(tuple(cut.stages))


@by_short_text(maxsize=256)
def _with_read_filters_lifted(plan_bytes: bytes) -> bytes:
    """The plan with every read's filter lifted above it (see _lift_read_filter); kept,
    as every cut of a query starts from it."""
    plan = plan_pb2.Plan.FromString(plan_bytes)
    root = plan.relations[0].root
    for rel in [m for m in _messages(root.input) if isinstance(m, algebra_pb2.Rel)]:
        if rel.WhichOneof("rel_type") == "read" and rel.read.HasField("filter"):
            _lift_read_filter(rel)
    return plan.SerializeToString()


def _visit(cut: _Cut, rel: algebra_pb2.Rel, gathered: bool = False
           ) -> tuple[algebra_pb2.Rel, _Dist]:
    """`rel` cut into stages, and how its rows are spread; `gathered` when whatever reads
    `rel` takes all its rows into one task."""
    kind = rel.WhichOneof("rel_type")
    if kind == "read":
        return rel, _read_dist(cut, rel)
    if kind == "fetch" and rel.fetch.input.WhichOneof("rel_type") == "sort":
        return _visit_top_k(cut, rel)
    if kind in _SINGLE_INPUT:
        return _visit_single_input(cut, rel, kind, gathered)
    if kind == "aggregate":
        return _visit_aggregate(cut, rel, gathered)
    if kind == "join":
        return _visit_join(cut, rel)
    # Cross joins, set operations and anything else: all inputs into one task.
    for child in _children(rel):
        new_child, dist = _visit(cut, child)
        child.CopyFrom(_gather(cut, new_child, dist))
    return rel, _SINGLE


def _read_dist(cut: _Cut, rel: algebra_pb2.Rel) -> _Dist:
    if not rel.read.HasField("named_table"):
        return _SINGLE  # VALUES and the like
    scan = cut.scans[rel.read.named_table.names[-1]]
    tasks = min(len(scan.files), cut.partitions) if scan.split else 1
    return _Dist(tasks) if tasks > 1 else _SINGLE


def _visit_top_k(cut: _Cut, rel: algebra_pb2.Rel) -> tuple[algebra_pb2.Rel, _Dist]:
    """A limit over a sort: with several tasks, each first keeps its own top rows."""
    sort = rel.fetch.input.sort
    child, dist = _visit(cut, sort.input)
    sort.input.CopyFrom(child)
    if dist.tasks > 1 and _no_offset(rel.fetch):
        pushed = algebra_pb2.Rel()
        pushed.CopyFrom(rel)
        sort.input.CopyFrom(_gather(cut, pushed, dist))
    else:
        sort.input.CopyFrom(_gather(cut, child, dist))
    return rel, _SINGLE


def _visit_single_input(cut: _Cut, rel: algebra_pb2.Rel, kind: str, gathered: bool
                        ) -> tuple[algebra_pb2.Rel, _Dist]:
    body = getattr(rel, kind)
    needs_all_rows = kind in ("fetch", "sort") or (kind == "project" and _has_window(body))
    # A subquery in an expression reads its tables whole in every task of the stage:
    # past the broadcast limit, computing it once in one task costs less.
    gathers = needs_all_rows or _subquery_bytes(cut, body) > cut.broadcast_limit
    child, dist = _visit(cut, body.input, gathered or gathers)
    if gathers:
        body.input.CopyFrom(_gather(cut, child, dist))
        return rel, _SINGLE
    body.input.CopyFrom(child)
    if kind == "project" and dist.keyings:
        return rel, _through_project(cut, child, body, dist)
    return rel, dist.emitted(body.common)


def _subquery_bytes(cut: _Cut, body: Message) -> int:
    """The bytes of files the subqueries in a relation's expressions read (its input
    aside); unknown sizes count as unlimited."""
    total = 0
    for descriptor, value in body.ListFields():
        if descriptor.name == "input" or descriptor.message_type is None:
            continue
        for item in value if descriptor.is_repeated else [value]:
            size = _input_bytes(cut, item)
            if size is None:
                return sys.maxsize
            total += size
    return total


def _through_project(cut: _Cut, child: algebra_pb2.Rel, project: algebra_pb2.ProjectRel,
                     dist: _Dist) -> _Dist:
    """A plain field expression carries a hash key on."""
    return dist.through(_project_sources(project, _width(cut, child)))


def _visit_aggregate(cut: _Cut, rel: algebra_pb2.Rel, gathered: bool
                     ) -> tuple[algebra_pb2.Rel, _Dist]:
    aggregate = rel.aggregate
    child, dist = _visit(cut, aggregate.input)
    keys = _group_keys(aggregate)
    if keys is not None and dist.tasks == cut.partitions and any(
            all(key in keys for key in keying) for keying in dist.keyings):
        # Rows of one group agree on a subset of its keys, so hashing on that subset
        # already put each group in one task: aggregate in place.
        aggregate.input.CopyFrom(child)
        group_columns: list[int | None] = list(keys)
        return rel, dist.through(group_columns).emitted(aggregate.common)
    if dist.tasks == 1:
        aggregate.input.CopyFrom(child)
        return rel, _SINGLE
    ungrouped = not aggregate.grouping_expressions and len(aggregate.groupings) <= 1
    if ungrouped or keys is not None:
        split = _two_phase(cut, rel, child, dist, len(keys or ()), gathered)
        if split is not None:
            return split
    if keys is None:  # ungrouped, or grouping sets, or keys that are expressions
        aggregate.input.CopyFrom(_gather(cut, child, dist))
        return rel, _SINGLE
    aggregate.input.CopyFrom(_hash(cut, child, dist, keys))
    return rel, _hashed_on(cut, range(len(keys))).emitted(aggregate.common)


# -- two-phase aggregation --------------------------------------------------------------
_DECOMPOSABLE = {"sum", "count", "min", "max", "avg"}
_FINAL_OF = {"sum": "sum", "count": "sum", "min": "min", "max": "max"}


def _two_phase(cut: _Cut, rel: algebra_pb2.Rel, child: algebra_pb2.Rel, dist: _Dist,
               key_count: int, gathered: bool) -> tuple[algebra_pb2.Rel, _Dist] | None:
    """A partial aggregate in the upstream tasks and a final one after the exchange.

    Partial results are fewer rows to shuffle. Final sums of partial sums have wider
    decimal types than the original, so the final values are cast back to the original
    output types (avg becomes sum / count, cast likewise). None if a measure cannot be
    split (DISTINCT, FILTER, ordered or other functions).
    """
    aggregate = rel.aggregate
    names = [cut.functions.get(m.measure.function_reference, "") for m in aggregate.measures]
    if any(n not in _DECOMPOSABLE or m.HasField("filter") or m.measure.sorts
           or m.measure.invocation == algebra_pb2.AggregateFunction.AGGREGATION_INVOCATION_DISTINCT
           for n, m in zip(names, aggregate.measures, strict=True)):
        return None
    original = algebra_pb2.Rel()
    original.aggregate.CopyFrom(aggregate)
    original.aggregate.input.CopyFrom(child)
    original.aggregate.ClearField("common")
    output_types = _substrait_types(cut, _rel_schema(cut, original))

    partial = algebra_pb2.Rel()
    partial.CopyFrom(original)
    del partial.aggregate.measures[:]
    finals: list[tuple[str, list[int]]] = []  # per original measure: how, partial columns
    for name, measure in zip(names, aggregate.measures, strict=True):
        parts = ["sum", "count"] if name == "avg" else [name]
        columns = []
        for part in parts:
            copied = partial.aggregate.measures.add()
            copied.CopyFrom(measure)
            copied.measure.function_reference = _anchor(cut, part)
            columns.append(key_count + len(partial.aggregate.measures) - 1)
        finals.append((name, columns))

    # Groups read whole anyway (`gathered`): the partial results go straight to the one
    # task that reads them, which also finishes the aggregate (a stage less than hashing).
    exchanged = (_hash(cut, partial, dist, tuple(range(key_count)))
                 if key_count and not gathered else _gather(cut, partial, dist))
    final = algebra_pb2.Rel()
    final.aggregate.input.CopyFrom(exchanged)
    for column in range(key_count):
        final.aggregate.grouping_expressions.add().CopyFrom(_field(column))
    if aggregate.groupings:
        final.aggregate.groupings.add().expression_references.extend(range(key_count))
    final_columns = []  # per original measure: the final aggregate's columns
    for name, columns in finals:
        mine = []
        for column, part in zip(columns, ["sum", "count"] if name == "avg" else [name],
                                strict=True):
            measure = final.aggregate.measures.add().measure
            measure.function_reference = _anchor(cut, _FINAL_OF[part])
            measure.invocation = algebra_pb2.AggregateFunction.AGGREGATION_INVOCATION_ALL
            measure.arguments.add().value.CopyFrom(_field(column))
            mine.append(key_count + len(final.aggregate.measures) - 1)
        final_columns.append(mine)

    project = algebra_pb2.Rel()
    project.project.input.CopyFrom(final)
    width = key_count + len(final.aggregate.measures)
    for index, ((name, _), columns) in enumerate(zip(finals, final_columns, strict=True)):
        value = _field(columns[0])
        if name == "avg":
            value = _call(cut, "divide", [_field(columns[0]), _field(columns[1])])
        cast = project.project.expressions.add().cast
        cast.type.CopyFrom(output_types[key_count + index])
        cast.input.CopyFrom(value)
        cast.failure_behavior = algebra_pb2.Expression.Cast.FAILURE_BEHAVIOR_THROW_EXCEPTION
    natural = list(range(key_count)) + [width + i for i in range(len(finals))]
    mapping = (list(aggregate.common.emit.output_mapping) if aggregate.common.HasField("emit")
               else list(range(len(natural))))
    project.project.common.emit.output_mapping.extend(natural[i] for i in mapping)
    if not key_count or gathered:
        return project, _SINGLE
    return project, _hashed_on(cut, range(key_count)).emitted(aggregate.common)


def _field(column: int) -> algebra_pb2.Expression:
    expression = algebra_pb2.Expression()
    expression.selection.direct_reference.struct_field.field = column
    expression.selection.root_reference.SetInParent()
    return expression


def _call(cut: _Cut, name: str, arguments: list[algebra_pb2.Expression]
          ) -> algebra_pb2.Expression:
    expression = algebra_pb2.Expression()
    function = expression.scalar_function
    function.function_reference = _anchor(cut, name)
    for argument in arguments:
        function.arguments.add().value.CopyFrom(argument)
    return expression


def _anchor(cut: _Cut, name: str) -> int:
    """The plan's anchor for function `name`, declared now if the plan has none."""
    for anchor, known in cut.functions.items():
        if known == name:
            return anchor
    template = next(e.extension_function for e in cut.plan.extensions
                    if e.HasField("extension_function"))
    anchor = max(cut.functions, default=0) + 1
    declared = cut.plan.extensions.add().extension_function
    declared.CopyFrom(template)
    declared.function_anchor = anchor
    declared.name = name
    cut.functions[anchor] = name
    return anchor


def _substrait_types(cut: _Cut, schema: pa.Schema) -> list[Any]:
    """Substrait types of `schema`'s columns, as DataFusion writes them."""
    name = f"__types_{len(cut.stages)}_{len(schema)}_{id(schema)}"
    nullable = pa.schema([pa.field(f"c{i}", f.type) for i, f in enumerate(schema)])
    cut.ctx.register_table(name, cut.table_from(nullable))
    read = _read_of(cut, name).read
    return list(read.base_schema.struct.types)


def _visit_join(cut: _Cut, rel: algebra_pb2.Rel) -> tuple[algebra_pb2.Rel, _Dist]:
    join = rel.join
    left, left_dist = _visit(cut, join.left)
    right, right_dist = _visit(cut, join.right)
    left_width = _width(cut, left)
    pairs = _equi_keys(cut, join.expression, left_width) if join.HasField("expression") else []
    if not pairs:
        join.left.CopyFrom(_gather(cut, left, left_dist))
        join.right.CopyFrom(_gather(cut, right, right_dist))
        return rel, _SINGLE
    broadcast = _broadcast_side(cut, join.type, left, right)
    if broadcast == "right":
        join.left.CopyFrom(left)
        join.right.CopyFrom(_whole(cut, right, right_dist))
        return rel, _joined(join, left_width, left_dist, None)
    if broadcast == "left":
        join.left.CopyFrom(_whole(cut, left, left_dist))
        join.right.CopyFrom(right)
        return rel, _joined(join, left_width, None, right_dist)
    left_keys, right_keys = _co_partition_keys(cut, pairs, left_dist, right_dist)
    sides = {"left": (left, left_dist, left_keys), "right": (right, right_dist, right_keys)}
    probe = _probe_side(cut, join.type, sides)
    hashed: dict[str, algebra_pb2.Rel] = {}
    if probe is not None:
        other = "right" if probe == "left" else "left"
        probed = hashed[probe] = _hash(cut, *sides[probe])
        if _probed_small(cut, probed):
            if join.type in (_BROADCAST_LEFT if probe == "left" else _BROADCAST_RIGHT):
                cut.whole_reads.add(probed.read.named_table.names[-1])
                getattr(join, probe).CopyFrom(probed)
                getattr(join, other).CopyFrom(sides[other][0])
                kept = sides[other][1]
                return rel, (_joined(join, left_width, None, kept) if probe == "left"
                             else _joined(join, left_width, kept, None))
            # Not to be broadcast, but the other input's rows without a match here
            # never reach the output: only those with a match are shuffled.
            hashed[other] = _hash_reduced(cut, sides[other], probed, pairs, probe == "left",
                                          join.expression)
    join.left.CopyFrom(hashed.get("left") or _hash(cut, left, left_dist, left_keys))
    join.right.CopyFrom(hashed.get("right") or _hash(cut, right, right_dist, right_keys))
    return rel, _joined(join, left_width, _hashed_on(cut, left_keys),
                        _hashed_on(cut, right_keys))


def _co_partition_keys(cut: _Cut, pairs: list[tuple[int, int]], left_dist: _Dist,
                       right_dist: _Dist) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The columns to hash each join input on. Rows that match agree on every key pair,
    so hashing both sides on any subset of the pairs puts matches in the same task: an
    input already hashed on such a subset keeps its partitioning, and only the other
    input is shuffled to match it (equal key columns have equal types, so equal values
    hash alike)."""
    left_columns = [left for left, _ in pairs]
    right_columns = [right for _, right in pairs]
    for dist, mine, other in ((left_dist, left_columns, right_columns),
                              (right_dist, right_columns, left_columns)):
        for keys in dist.keyings if dist.tasks == cut.partitions else ():
            if all(key in mine for key in keys):
                matched = tuple(other[mine.index(key)] for key in keys)
                return (keys, matched) if mine is left_columns else (matched, keys)
    return tuple(left_columns), tuple(right_columns)


def _joined(join: algebra_pb2.JoinRel, left_width: int, left: _Dist | None,
            right: _Dist | None) -> _Dist:
    """How a join's output is spread, from the spread of the input(s) its tasks split
    (the other input is whole in every task). A side's hash keys hold in the output if
    every output row carries that side's key values: not for the side an outer join
    pads with nulls."""
    split = left or right
    assert split is not None
    keyings: list[tuple[int, ...]] = []
    if left is not None and join.type in _LEFT_KEYS_KEPT:
        keyings += left.keyings
    if right is not None and join.type in _RIGHT_ONLY_OUTPUT:
        keyings += right.keyings
    elif right is not None and join.type in _RIGHT_KEYS_KEPT:
        keyings += [tuple(k + left_width for k in keys) for keys in right.keyings]
    return _Dist(split.tasks, tuple(keyings)).emitted(join.common)


# -- broadcast joins --------------------------------------------------------------------
_J = algebra_pb2.JoinRel
# Join types whose rows of one side never depend on rows of the other side beyond
# matches: that other side may be broadcast whole to every task of this side.
_BROADCAST_RIGHT = {_J.JOIN_TYPE_INNER, _J.JOIN_TYPE_LEFT, _J.JOIN_TYPE_LEFT_SEMI,
                    _J.JOIN_TYPE_LEFT_ANTI, _J.JOIN_TYPE_LEFT_MARK}
_BROADCAST_LEFT = {_J.JOIN_TYPE_INNER, _J.JOIN_TYPE_RIGHT, _J.JOIN_TYPE_RIGHT_SEMI,
                   _J.JOIN_TYPE_RIGHT_ANTI, _J.JOIN_TYPE_RIGHT_MARK}
_RIGHT_ONLY_OUTPUT = {_J.JOIN_TYPE_RIGHT_SEMI, _J.JOIN_TYPE_RIGHT_ANTI}
# Join types whose every output row carries that input's key values unchanged.
_LEFT_KEYS_KEPT = {_J.JOIN_TYPE_INNER, _J.JOIN_TYPE_LEFT, _J.JOIN_TYPE_LEFT_SEMI,
                   _J.JOIN_TYPE_LEFT_ANTI, _J.JOIN_TYPE_LEFT_MARK}
_RIGHT_KEYS_KEPT = {_J.JOIN_TYPE_INNER, _J.JOIN_TYPE_RIGHT}


def _broadcast_side(cut: _Cut, join_type: int, left: algebra_pb2.Rel, right: algebra_pb2.Rel
                    ) -> str | None:
    """"left" or "right" when that input is small enough to send whole to every task."""
    sizes = {"left": _input_bytes(cut, left), "right": _input_bytes(cut, right)}
    allowed = [side for side, types in (("right", _BROADCAST_RIGHT), ("left", _BROADCAST_LEFT))
               if join_type in types]
    small = [side for side in allowed
             if (size := sizes[side]) is not None and size <= cut.broadcast_limit]
    return min(small, key=lambda side: sizes[side] or 0) if small else None


# -- adaptive broadcast -----------------------------------------------------------------
_REDUCING = ("filter", "aggregate", "fetch")  # a join alone may keep every row (a foreign key)
_Side = tuple[algebra_pb2.Rel, _Dist, tuple[int, ...]]


def _probe_side(cut: _Cut, join_type: int, sides: dict[str, _Side]) -> str | None:
    """The join input to run first and measure, in adaptive planning: one that reduces
    its rows, when both inputs need a shuffle (else knowing saves nothing) and the join
    lets one side be broadcast or the other reduced; the smaller by estimate. The other
    input must read more than the broadcast limit: a small one costs little to shuffle,
    less than running the two inputs one after the other (TPC-H q13)."""
    if (cut.observed is None or cut.broadcast_limit <= 0
            or join_type not in _BROADCAST_LEFT | _BROADCAST_RIGHT
            or any(_hash_kept(cut, dist, keys) for _, dist, keys in sides.values())):
        return None
    sizes = {name: _or_max(_estimated_bytes(cut, rel)) for name, (rel, _, _) in sides.items()}
    candidates = [name for name, (rel, _, _) in sides.items() if _reduces(cut, rel)
                  and sizes["right" if name == "left" else "left"] > cut.broadcast_limit]
    return min(candidates, key=lambda name: sizes[name], default=None)


def _or_max(size: int | None) -> int:
    return sys.maxsize if size is None else size


def _probed_small(cut: _Cut, probed: algebra_pb2.Rel) -> bool:
    """Whether the probe stage `probed` reads wrote at most the broadcast limit; stops
    planning if it has not run yet."""
    assert cut.observed is not None
    name = probed.read.named_table.names[-1]
    stage = _input_stage(name)
    written = cut.observed.get(stage)
    if written is None:
        raise _Probe(stage)
    return written <= cut.broadcast_limit


def _hash_reduced(cut: _Cut, side: _Side, probed: algebra_pb2.Rel,
                  pairs: list[tuple[int, int]], probe_is_left: bool,
                  condition: algebra_pb2.Expression) -> algebra_pb2.Rel:
    """`side` hashed after a semi join with the small probe's keys, read whole there
    (or plainly hashed where the keys compare NULLs as equal or differ in type)."""
    rel, dist, keys = side
    name = probed.read.named_table.names[-1]
    probe_schema = next(s.schema for s in cut.stages if s.stage == _input_stage(name))
    schema = _rel_schema(cut, rel)
    matched = [(right, left) if probe_is_left else (left, right) for left, right in pairs]
    if (_null_safe(cut, condition)
            or any(plain_type(schema.field(mine).type) != probe_schema.field(theirs).type
                   for mine, theirs in matched)):
        return _hash(cut, rel, dist, keys)
    reduced = _semi_join_rel(cut, rel, len(schema), probed, matched)
    # Read whole in the reducing stage only; the join itself reads its own partition.
    cut.whole_reads.add(name)
    try:
        return _hash(cut, reduced, dist, keys)
    finally:
        cut.whole_reads.discard(name)


def _null_safe(cut: _Cut, condition: algebra_pb2.Expression) -> bool:
    """Whether a join condition compares NULLs as equal somewhere: a semi join on plain
    equality would drop rows it keeps."""
    return any(cut.functions.get(m.scalar_function.function_reference) == "is_not_distinct_from"
               for m in _messages(condition) if isinstance(m, algebra_pb2.Expression))


def _semi_join_rel(cut: _Cut, kept: algebra_pb2.Rel, kept_width: int,
                   matched: algebra_pb2.Rel, pairs: list[tuple[int, int]]) -> algebra_pb2.Rel:
    """`kept`'s rows that have a row in `matched` equal on every (kept column, matched
    column) pair."""
    reduced = algebra_pb2.Rel()
    reduced.join.type = _J.JOIN_TYPE_LEFT_SEMI
    reduced.join.left.CopyFrom(kept)
    reduced.join.right.CopyFrom(matched)
    equalities = [_call(cut, "equal", [_field(mine), _field(kept_width + theirs)])
                  for mine, theirs in pairs]
    reduced.join.expression.CopyFrom(
        equalities[0] if len(equalities) == 1 else _call(cut, "and", equalities))
    return reduced


# -- semi-join reduction of aggregate inputs ----------------------------------------------
_REDUCIBLE = {_J.JOIN_TYPE_INNER, _J.JOIN_TYPE_LEFT_SEMI}


def _reduce_aggregate_inputs(cut: _Cut, rel: algebra_pb2.Rel) -> None:
    """Where a join matches a grouped aggregate on one of its group keys, and the key's
    values on the other side all come from a small filtered table read (TPC-H q2, q17,
    q20: the parts of one brand or size), keep only the aggregate's input rows whose key
    is among that read's, before grouping: groups without such a key could never match.
    The copy of the read is broadcast (it is at most the broadcast limit), so the
    aggregate's input is not hashed and shuffled in full first. Bottom-up: a rewrite
    only ever changes what lies below the join that makes it."""
    for child in _children(rel):
        _reduce_aggregate_inputs(cut, child)
    if (rel.WhichOneof("rel_type") != "join" or rel.join.type not in _REDUCIBLE
            or not rel.join.HasField("expression")):
        return
    join = rel.join
    if _null_safe(cut, join.expression):
        return
    left_width = _width(cut, join.left)
    for left_column, right_column in _equi_keys(cut, join.expression, left_width):
        for grouped, key, other, column in ((join.right, right_column, join.left, left_column),
                                            (join.left, left_column, join.right, right_column)):
            target = _grouped_input(cut, grouped, key)
            reducer = _reducer(cut, other, column) if target is not None else None
            if target is not None and reducer is not None and _semi_join(cut, *target, *reducer):
                return


def _width(cut: _Cut, rel: algebra_pb2.Rel) -> int:
    return len(_rel_schema(cut, rel))


def _rel_schema(cut: _Cut, rel: algebra_pb2.Rel) -> pa.Schema:
    """The schema of `rel`'s output."""
    return _schema_of(cut, _stage_plan(cut.plan, rel, None))


def _project_sources(project: algebra_pb2.ProjectRel, input_width: int) -> list[int | None]:
    """For each output column of a projection (its input's columns, then its
    expressions), the input column it passes on, or None."""
    sources: list[int | None] = list(range(input_width))
    sources += [_field_index(e) for e in project.expressions]
    if project.common.HasField("emit"):
        sources = [sources[i] for i in project.common.emit.output_mapping]
    return sources


def _passed_on(cut: _Cut, rel: algebra_pb2.Rel, column: int) -> int | None:
    """The input column a projection relation's output `column` passes on, or None."""
    return _project_sources(rel.project, _width(cut, rel.project.input))[column]


def _grouped_input(cut: _Cut, rel: algebra_pb2.Rel, column: int | None
                   ) -> tuple[algebra_pb2.Rel, int] | None:
    """Below projections, a grouped aggregate whose output `column` is one of its group
    keys: the place in its input to filter (see _sink), and that key's column there."""
    while column is not None and rel.WhichOneof("rel_type") == "project":
        column = _passed_on(cut, rel, column)
        rel = rel.project.input
    if column is None or rel.WhichOneof("rel_type") != "aggregate":
        return None
    aggregate = rel.aggregate
    keys = _group_keys(aggregate)
    if keys is None:
        return None
    outputs = list(range(len(keys) + len(aggregate.measures)))
    if aggregate.common.HasField("emit"):
        outputs = [outputs[i] for i in aggregate.common.emit.output_mapping]
    if outputs[column] >= len(keys):
        return None
    return _sink(cut, aggregate.input, keys[outputs[column]])


def _sink(cut: _Cut, rel: algebra_pb2.Rel, column: int) -> tuple[algebra_pb2.Rel, int]:
    """The lowest relation under `rel` that `column` comes from unchanged, through
    projections and the kept side of inner and semi joins: the earliest place to drop
    rows by it."""
    while True:
        kind = rel.WhichOneof("rel_type")
        if kind == "project":
            source = _passed_on(cut, rel, column)
            if source is None:
                return rel, column
            rel, column = rel.project.input, source
        elif kind == "join" and rel.join.type in _REDUCIBLE:
            left_width = _width(cut, rel.join.left)
            if column < left_width:
                rel = rel.join.left
            elif rel.join.type == _J.JOIN_TYPE_INNER:
                rel, column = rel.join.right, column - left_width
            else:
                return rel, column
        else:
            return rel, column


def _reducer(cut: _Cut, rel: algebra_pb2.Rel, column: int | None
             ) -> tuple[algebra_pb2.Rel, int] | None:
    """A small filtered table read whose values of one column include every value of
    `column` in `rel`'s output (followed through projections, filters, both sides of
    inner joins and the kept side of semi joins, and across their key equalities)."""
    if column is None:
        return None
    if _small_filtered_read(cut, rel):
        return rel, column
    kind = rel.WhichOneof("rel_type")
    if kind == "project":
        return _reducer(cut, rel.project.input, _passed_on(cut, rel, column))
    if kind == "filter":
        return _reducer(cut, rel.filter.input, column)
    if kind != "join" or rel.join.type not in _REDUCIBLE or not rel.join.HasField("expression"):
        return None
    join = rel.join
    left_width = _width(cut, join.left)
    pairs = _equi_keys(cut, join.expression, left_width)
    if column < left_width:
        options = [(join.left, column)] + [(join.right, r) for left, r in pairs if left == column]
    elif join.type == _J.JOIN_TYPE_INNER:
        right = column - left_width
        options = [(join.right, right)] + [(join.left, left) for left, r in pairs if r == right]
    else:
        return None
    for child, child_column in options:
        found = _reducer(cut, child, child_column)
        if found is not None:
            return found
    return None


def _small_filtered_read(cut: _Cut, rel: algebra_pb2.Rel) -> bool:
    """One table read, filtered (and projected), reading at most the broadcast limit."""
    kinds, stack = set(), [rel]
    while stack:
        node = stack.pop()
        kinds.add(node.WhichOneof("rel_type"))
        stack.extend(_children(node))
    size = _input_bytes(cut, rel)
    return ("filter" in kinds and kinds <= {"read", "filter", "project"}
            and len(_named_reads(rel)) == 1 and size is not None
            and size <= cut.broadcast_limit)


def _semi_join(cut: _Cut, target: algebra_pb2.Rel, column: int, reducer: algebra_pb2.Rel,
               reducer_column: int) -> bool:
    """Replace `target` by its rows whose `column` is among `reducer_column`'s values in
    a copy of `reducer` (not where the two columns' types differ)."""
    copy = algebra_pb2.Rel()
    copy.CopyFrom(reducer)
    target_schema = _rel_schema(cut, target)
    reducer_schema = _rel_schema(cut, copy)
    if (plain_type(target_schema.field(column).type)
            != plain_type(reducer_schema.field(reducer_column).type)):
        return False
    for read in _main_reads(copy):  # its own scan names: a stage binds each name once
        _add_scan(cut, read, cut.scans[read.named_table.names[-1]])
    target.CopyFrom(_semi_join_rel(cut, target, len(target_schema), copy,
                                   [(column, reducer_column)]))
    return True


def _reduces(cut: _Cut, rel: algebra_pb2.Rel) -> bool:
    """Whether `rel` may output far fewer bytes than it reads: it filters or aggregates,
    itself or below its joins, or joins a probe found small (within its stage: reads of
    other stages end the walk)."""
    kind = rel.WhichOneof("rel_type")
    if kind in _REDUCING:
        return True
    if kind == "read":
        names = rel.read.named_table.names
        return bool(names) and names[-1] in cut.whole_reads
    return any(_reduces(cut, child) for child in _children(rel))


def _estimated_bytes(cut: _Cut, rel: Message) -> int | None:
    """The bytes `rel` reads: its tables' files and the outputs (measured, or else
    estimated alike) of the stages it reads; None where unknown."""
    return _bytes_read(cut, rel, cut.estimates)


def _input_bytes(cut: _Cut, rel: Message) -> int | None:
    """The bytes of files `rel` (or an expression) reads; None if unknown or it reads
    another stage."""
    return _bytes_read(cut, rel, {})


def _bytes_read(cut: _Cut, rel: Message, stage_bytes: dict[StageId, int | None]
                ) -> int | None:
    total = 0
    for name in _named_reads(rel):
        scan = cut.scans.get(name)
        if scan is not None:
            size = scan.bytes
        elif name.startswith(_INPUT_PREFIX):
            size = stage_bytes.get(_input_stage(name))
        else:
            return None  # a name the cut did not bind
        if size is None:
            return None
        total += size
    return total


def _named_reads(message: Message) -> tuple[str, ...]:
    """The names `message` reads. A cut asks this of the same subtrees again and again
    (each join of both its sides, each replan of all of them), so the answer is kept by
    the subtree's bytes, which are all it depends on."""
    return _reads_in_bytes(message.SerializeToString(), cast(Hashable, type(message)))


@by_short_text(maxsize=4096)
def _reads_in_bytes(data: bytes, kind: Hashable) -> tuple[str, ...]:
    # All names read are private (`__scan_N`, `__stage_N`) once bound: bytes without the
    # prefix have none, and their (slow) walk is skipped.
    if b"__s" not in data:
        return ()
    message = cast(type[Message], kind).FromString(data)
    return tuple(m.named_table.names[-1] for m in _messages(message)
                 if isinstance(m, algebra_pb2.ReadRel) and m.HasField("named_table"))


def _whole(cut: _Cut, rel: algebra_pb2.Rel, dist: _Dist) -> algebra_pb2.Rel:
    """`rel` for every task of another stage: computed in each of them if it is one task
    over whole tables, else gathered once into one partition that every task reads."""
    if dist.tasks == 1:
        return rel
    return _exchange(cut, rel, dist, Exchange(ExchangeKind.BROADCAST, 1))


# -- exchanges --------------------------------------------------------------------------
def _gather(cut: _Cut, rel: algebra_pb2.Rel, dist: _Dist) -> algebra_pb2.Rel:
    if dist.tasks == 1:
        return rel  # already in one task: it stays in the stage
    return _exchange(cut, rel, dist, Exchange(ExchangeKind.GATHER, 1))


def _hash(cut: _Cut, rel: algebra_pb2.Rel, dist: _Dist, keys: tuple[int, ...]
          ) -> algebra_pb2.Rel:
    if _hash_kept(cut, dist, keys):
        return rel  # already partitioned this way
    return _exchange(cut, rel, dist, Exchange(ExchangeKind.HASH, cut.partitions, keys))


def _hash_kept(cut: _Cut, dist: _Dist, keys: tuple[int, ...]) -> bool:
    return keys in dist.keyings and dist.tasks == cut.partitions


def _hashed_on(cut: _Cut, keys: Iterable[int]) -> _Dist:
    return _Dist(cut.partitions, (tuple(keys),))


def _exchange(cut: _Cut, rel: algebra_pb2.Rel, dist: _Dist, output: Exchange
              ) -> algebra_pb2.Rel:
    """End a stage at `rel`; the rest of the plan reads its output under a new name."""
    plan = _stage_plan(cut.plan, rel, None)
    schema = exchange_schema(_schema_of(cut, plan))
    stage = _add_stage(cut, plan, rel, dist.tasks, output, schema)
    name = input_name(stage)
    cut.ctx.register_table(name, cut.table_from(schema))
    return _read_of(cut, name)


def _add_stage(cut: _Cut, plan: plan_pb2.Plan, rel: algebra_pb2.Rel, tasks: int,
               output: Exchange, schema: pa.Schema) -> StageId:
    stage = StageId(len(cut.stages) + 1)
    inputs: list[StageId] = []
    scans: list[ScanSpec] = []
    kinds: list[str] = []
    for message in _messages(rel):
        if isinstance(message, algebra_pb2.Rel):
            kinds.append(message.WhichOneof("rel_type") or "")
        if isinstance(message, algebra_pb2.ReadRel) and message.HasField("named_table"):
            name = message.named_table.names[-1]
            if name in cut.scans:
                scans.append(cut.scans[name])
            else:
                inputs.append(_input_stage(name))
    summary = ", ".join(k for k in dict.fromkeys(reversed(kinds)) if k not in ("read", "project"))
    whole = frozenset(i for i in inputs if input_name(i) in cut.whole_reads)
    cut.stages.append(StageDef(stage, tasks, plan.SerializeToString(), tuple(inputs), output,
                               schema, tuple(scans), summary or "scan", whole))
    observed = (cut.observed or {}).get(stage)
    cut.estimates[stage] = observed if observed is not None else _estimated_bytes(cut, rel)
    return stage


def _read_of(cut: _Cut, name: str) -> algebra_pb2.Rel:
    """A Substrait read of the registered table `name`, as DataFusion writes one."""
    frame = cut.ctx.table(name)
    produced = plan_pb2.Plan.FromString(
        ds_substrait.Producer.to_substrait_plan(frame.logical_plan(), cut.ctx).encode())
    read = next(m for m in _messages(produced) if isinstance(m, algebra_pb2.ReadRel))
    read.named_table.names[:] = [name]
    rel = algebra_pb2.Rel()
    rel.read.CopyFrom(read)
    return rel


# -- table reads ------------------------------------------------------------------------
def _main_reads(rel: algebra_pb2.Rel) -> Iterator[algebra_pb2.ReadRel]:
    """The named reads of the relation tree itself (not inside expressions)."""
    if rel.WhichOneof("rel_type") == "read":
        if rel.read.HasField("named_table"):
            yield rel.read
        return
    for child in _children(rel):
        yield from _main_reads(child)


def _lift_read_filter(rel: algebra_pb2.Rel) -> None:
    """Make a read's exact filter a filter relation above it.

    The coordinator plans over pyarrow datasets, which take filters as exact; the
    executors' Parquet tables do not, and DataFusion's consumer then drops the filter.
    The read's filter and projection index the full table schema, so the filter goes
    over an unprojected read and a projection follows it.
    """
    read = algebra_pb2.ReadRel()
    read.CopyFrom(rel.read)
    read.ClearField("filter")
    read.ClearField("projection")
    filtered = algebra_pb2.Rel()
    filtered.filter.input.read.CopyFrom(read)
    filtered.filter.condition.CopyFrom(rel.read.filter)
    columns = [item.field for item in rel.read.projection.select.struct_items]
    if not rel.read.HasField("projection"):
        rel.CopyFrom(filtered)
        return
    projected = algebra_pb2.Rel()
    projected.project.input.CopyFrom(filtered)
    projected.project.common.emit.output_mapping.extend(columns)
    rel.CopyFrom(projected)


def _bind_read(cut: _Cut, read: algebra_pb2.ReadRel, split: bool) -> None:
    """Rename a catalog read to a private name bound to its snapshot files."""
    found = cut.tables(list(read.named_table.names))
    _add_scan(cut, read, ScanSpec("", found.table, found.files, found.schema,
                                  split and len(found.files) > 1, found.bytes))


def _add_scan(cut: _Cut, read: algebra_pb2.ReadRel, spec: ScanSpec) -> None:
    """Name `read` after a new private scan of `spec`'s files, planned over an empty
    table of its schema."""
    name = f"__scan_{len(cut.scans) + 1}"
    cut.scans[name] = replace(spec, name=name)
    read.named_table.names[:] = [name]
    cut.ctx.register_table(name, cut.table_from(spec.schema))


# -- plan helpers -----------------------------------------------------------------------
def _stage_plan(original: plan_pb2.Plan, rel: algebra_pb2.Rel, names: list[str] | None
                ) -> plan_pb2.Plan:
    """A plan with the original's function declarations and `rel` as its one relation."""
    plan = plan_pb2.Plan()
    plan.CopyFrom(original)
    del plan.relations[:]
    relation = plan.relations.add()
    if names is None:
        relation.rel.CopyFrom(rel)
    else:
        relation.root.input.CopyFrom(rel)
        relation.root.names.extend(names)
    return plan


def _schema_of(cut: _Cut, plan: plan_pb2.Plan) -> pa.Schema:
    """The schema of a partial plan, which its bytes determine (reads carry their tables'
    schemas), kept by their digest: each replan asks again of the same parts."""
    data = plan.SerializeToString()
    key = hashlib.blake2b(data, digest_size=16).digest()
    schema = cut.schemas.get(key)
    if schema is None:
        serialized = ds_substrait.Serde.deserialize_bytes(data)
        logical = ds_substrait.Consumer.from_substrait_plan(cut.ctx, serialized)
        schema = cut.schemas[key] = cut.ctx.create_dataframe_from_logical_plan(logical).schema()
    return schema


def _messages(message: Message) -> list[Message]:
    """`message` and every message nested in it, depth first in field order (a stack,
    not recursive generators: plans are walked many times while cut)."""
    found = []
    stack = [message]
    while stack:
        current = stack.pop()
        found.append(current)
        nested: list[Message] = []
        for descriptor, value in current.ListFields():
            if descriptor.message_type is None:
                continue
            if not descriptor.is_repeated:
                nested.append(value)
            elif not _is_map_entry(descriptor.message_type):
                nested.extend(value)
        stack.extend(reversed(nested))
    return found


@functools.cache
def _is_map_entry(descriptor: Any) -> bool:
    return bool(descriptor.GetOptions().map_entry)


def _children(rel: algebra_pb2.Rel) -> list[algebra_pb2.Rel]:
    body = getattr(rel, rel.WhichOneof("rel_type") or "read")
    children = []
    for descriptor, value in body.ListFields():
        if descriptor.message_type is not algebra_pb2.Rel.DESCRIPTOR:
            continue
        if descriptor.is_repeated:
            children.extend(value)
        else:
            children.append(value)
    return children


def _has_window(project: algebra_pb2.ProjectRel) -> bool:
    return any(isinstance(m, algebra_pb2.Expression.WindowFunction)
               for e in project.expressions for m in _messages(e))


def _no_offset(fetch: algebra_pb2.FetchRel) -> bool:
    if not fetch.HasField("offset_expr"):
        return True
    literal = fetch.offset_expr.literal
    return fetch.offset_expr.HasField("literal") and literal.WhichOneof("literal_type") in (
        "i64", "i32") and getattr(literal, literal.WhichOneof("literal_type")) == 0


def _field_index(expression: algebra_pb2.Expression) -> int | None:
    """The column a plain field reference points at, or None."""
    if not expression.HasField("selection"):
        return None
    reference = expression.selection
    if not reference.HasField("direct_reference") or not reference.HasField("root_reference"):
        return None
    segment = reference.direct_reference
    if not segment.HasField("struct_field") or segment.struct_field.HasField("child"):
        return None
    return int(segment.struct_field.field)


def _group_keys(aggregate: algebra_pb2.AggregateRel) -> tuple[int, ...] | None:
    if len(aggregate.groupings) != 1 or not aggregate.grouping_expressions:
        return None
    keys = [_field_index(e) for e in aggregate.grouping_expressions]
    if any(k is None for k in keys):
        return None
    if list(aggregate.groupings[0].expression_references) != list(range(len(keys))):
        return None
    return tuple(k for k in keys if k is not None)


def _equi_keys(cut: _Cut, expression: algebra_pb2.Expression, left_width: int
               ) -> list[tuple[int, int]]:
    """(left column, right column) pairs of the equalities AND-ed in a join condition."""
    if not expression.HasField("scalar_function"):
        return []
    function = expression.scalar_function
    name = cut.functions.get(function.function_reference, "")
    arguments = [a.value for a in function.arguments]
    if name == "and":
        return [pair for a in arguments for pair in _equi_keys(cut, a, left_width)]
    if name not in _JOIN_KEY_FUNCTIONS or len(arguments) != 2:
        return []
    first, second = (_field_index(a) for a in arguments)
    if first is None or second is None:
        return []
    if first < left_width <= second:
        return [(first, second - left_width)]
    if second < left_width <= first:
        return [(second, first - left_width)]
    return []
