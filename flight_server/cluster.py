"""The distributed runtime's I/O: the coordinator service around the job state machine,
and the executor agent that registers, heartbeats and runs tasks.

Control calls are Flight actions with JSON bodies, authenticated by the executor token.
A query is cut into stages by the stage planner (engine.distributed.planner); reducers
pull their inputs from the executors holding them with Flight DoGet. A query the planner
cannot cut runs whole as one task, and EXPLAIN says why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from engine import PlannedQuery, SqlEngine
from engine.arrow_types import conform_batch
from engine.distributed.faults import FaultPoint, Faults
from engine.distributed.ids import Attempt, ExecutorId, JobId, StageId, TaskAttempt, TaskId
from engine.distributed.messages import (
    InputSource,
    StageInput,
    decode_stage_task,
    encode_stage_task,
)
from engine.distributed.planner import ExchangeKind, StageDef, StagePlan
from engine.distributed.shuffle import (
    MapOutput,
    ShuffleKey,
    Written,
    open_shuffle_file,
    sign_result_ticket,
    sweep_work_dir,
    write_arrow_file,
)
from engine.distributed.stage_task import (
    StageContexts,
    StageTask,
    shuffle_readers_batches,
    sweep_links,
)
from engine.distributed.stages import DistributedQuery, ResolvedQueries
from engine.distributed.state import (
    Action,
    CancelTask,
    Coordinator,
    Event,
    ExecutorJoined,
    ExecutorLost,
    FetchFailed,
    Heartbeat,
    JobCancelled,
    JobFinished,
    JobState,
    JobSubmitted,
    LaunchTask,
    Settings,
    StagesAdded,
    StagesDone,
    StageSpec,
    TaskFailed,
    TaskSucceeded,
    Tick,
)
from engine.errors import (
    EngineError,
    InvalidQuery,
    NotAllowed,
    ObjectNotFound,
    QueryTimeout,
    ResourceExhausted,
)
from engine.translate import translated_errors
from flight_server.errors import Cancelled, InvalidArgument, Unavailable

log = logging.getLogger("krishiv.cluster")

REGISTER = "krishiv.executor.register"
HEARTBEAT = "krishiv.executor.heartbeat"
REPORT = "krishiv.task.report"
RUN_TASK = "krishiv.task.run"
DROP_JOB = "krishiv.job.drop"  # delete a finished job's shuffle files
CANCEL_TASK = "krishiv.task.cancel"
METRICS = "krishiv.coordinator.metrics"  # JSON counters, for operators and tests

_SQL_STAGE = StageId(0)  # the one stage of a query that runs whole
_ADAPTIVE_NOTE = ("Run-time sizes may change this plan: a join input that filters or "
                  "aggregates runs first and, if small, is broadcast or filters the other "
                  "input (EXPLAIN ANALYZE shows the plan that ran)")
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(ANALYZE\s+)?(?:VERBOSE\s+)?", re.IGNORECASE)
# Runs of a job whose result partitions are lost before it gives up.
_RESULT_ATTEMPTS = 3
# How long --direct-results tickets (and the files they name) stay valid.
RESULT_TTL_S = 600.0
# Shuffle files of a job never announced as ended are removed after this long.
SHUFFLE_TTL_S = 6 * 3600.0
SWEEP_EVERY_S = 300.0
# Tasks an executor runs at once.
TASK_SLOTS = 2
SMALL_INPUT_BYTES = 4 * 1024 * 1024  # a single task reading less runs in one stream
# Hash exchanges split into at least this many partitions when sized from the cores.
MIN_SHUFFLE_PARTITIONS = 2
# In an executor's work dir: the id of the executor whose shuffle files it holds.
WORK_DIR_OWNER = ".executor-id"
DROPPED_JOBS_KEPT = 1024  # job ids an executor remembers having dropped
LINKS_DIR = "links"  # folders of links to data files, for stage tasks' scans
LINKS_TTL_S = 24 * 3600.0  # longer than any task runs: a task's folder stays while it does
# An executor whose coordinator stays unreachable this long stops itself.
COORDINATOR_GONE_S = 30.0


def _options(token: str | None) -> flight.FlightCallOptions:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers, timeout=30)


class _Clients:
    """One Flight client per node address, shared by all calls to it.

    A new connection per call cost a TCP and HTTP/2 handshake on every task launch,
    report and fetch. A client whose call fails is dropped, so the next call to that
    address (perhaps a new executor there) starts afresh.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_address: dict[str, flight.FlightClient] = {}

    @contextlib.contextmanager
    def use(self, address: str) -> Iterator[flight.FlightClient]:
        with self._lock:
            client = self._by_address.get(address)
            if client is None:
                client = self._by_address[address] = flight.connect(address)
        try:
            yield client
        except flight.FlightError:
            with self._lock:
                if self._by_address.get(address) is client:
                    del self._by_address[address]
            raise


_CLIENTS = _Clients()


def _send(address: str, kind: str, body: dict[str, Any], token: str | None) -> None:
    """One control action to another node, its JSON `body` as the action body."""
    with _CLIENTS.use(address) as client:
        list(client.do_action(flight.Action(kind, json.dumps(body).encode()), _options(token)))


def shuffle_file_here(work_dir: str, executor: ExecutorId, key: ShuffleKey) -> Path | None:
    """An executor's shuffle file, when its work dir is on this machine: read where it
    lies instead of copied over Flight. The owner file tells a work dir seen here from
    another machine's (or a restarted executor's) folder of the same name."""
    if not work_dir:
        return None
    folder = Path(work_dir)
    try:
        if (folder / WORK_DIR_OWNER).read_text() != executor:
            return None
    except OSError:
        return None
    path = key.path(folder)
    return path if path.is_file() else None


def _fetch_to_file(address: str, key: ShuffleKey, token: str | None, path: Path,
                   schema: pa.Schema | None = None) -> Written:
    """One shuffle file of another executor, fetched by DoGet into the local IPC file `path`
    (with `schema`, or the sender's); what was written. FlightError if it fails."""
    with _CLIENTS.use(address) as client:
        reader = client.do_get(flight.Ticket(key.ticket()), _options(token))
        return write_arrow_file(path, schema or reader.schema, (c.data for c in reader))


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidArgument("control message is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("control message must be a JSON object")
    return value


def _task_json(attempt: TaskAttempt) -> dict[str, Any]:
    task = attempt.task
    return {"job": task.job, "stage": task.stage, "stage_attempt": task.stage_attempt,
            "partition": task.partition, "attempt": attempt.attempt}


def _task_from(body: dict[str, Any]) -> TaskAttempt:
    try:
        task = TaskId(JobId(str(body["job"])), StageId(int(body["stage"])),
                      Attempt(int(body["stage_attempt"])), int(body["partition"]))
        return TaskAttempt(task, Attempt(int(body["attempt"])))
    except (KeyError, TypeError, ValueError):
        raise InvalidArgument("control message lacks a valid task id") from None


# Engine errors that say the query itself is at fault: the same on any executor.
_QUERY_ERRORS: dict[str, type[EngineError]] = {
    cls.__name__: cls
    for cls in (InvalidQuery, ObjectNotFound, NotAllowed, ResourceExhausted, QueryTimeout)
}


def _client_error(reason: str) -> Exception:
    """A failed job's reason as the typed error the client would get embedded."""
    kind, _, message = reason.partition(": ")
    error_type = _QUERY_ERRORS.get(kind)
    if error_type is not None:
        return error_type(message)
    return Unavailable(f"query failed on the cluster: {reason}")


@dataclass
class _Waiter:
    wake: threading.Event  # set on each of the two below
    finished: JobFinished | None = None
    stages_done: bool = False  # every stage submitted so far is done (more to come)


@dataclass(frozen=True)
class _TaskMetrics:
    executor: ExecutorId
    rows: int
    bytes: int
    seconds: float
    fetched_bytes: int  # shuffle input fetched from other executors (Arrow bytes)


@dataclass
class _Job:
    query: PlannedQuery
    text: str  # the SQL the job runs (without EXPLAIN)
    stages: dict[StageId, StageDef]  # empty: the whole query runs as one SQL task
    waiter: _Waiter
    plan: StagePlan | None = None  # the latest, for EXPLAIN ANALYZE
    reason: str = ""  # why it runs as one task, if it does
    metrics: dict[tuple[StageId, int], _TaskMetrics] = field(default_factory=dict)
    # The result stage, when the coordinator runs it over the job's gathered output.
    final_here: StageDef | None = None


def _explain_row(schema: pa.Schema, plan_type: str, stage_plan: StagePlan | None,
                 reason: str, metrics: dict[tuple[StageId, int], _TaskMetrics],
                 note: str = "") -> pa.RecordBatch:
    """The distributed plan as an EXPLAIN row, with per-stage metrics after a run."""
    if stage_plan is None:
        text = f"Stage {_SQL_STAGE}: 1 task runs the whole query ({reason})"
    else:
        notes = {}
        for stage in stage_plan.stages:
            tasks = [m for (s, _), m in metrics.items() if s == stage.stage]
            if tasks:
                executors = ", ".join(sorted({m.executor for m in tasks}))
                notes[stage.stage] = (
                    f"ran on {executors}: {sum(m.rows for m in tasks)} rows, "
                    f"{sum(m.bytes for m in tasks)} bytes written, "
                    f"{sum(m.fetched_bytes for m in tasks)} bytes fetched from other "
                    "executors, "
                    f"{sum(m.seconds for m in tasks):.3f} s in tasks")
        text = stage_plan.explain(notes) + (f"\n{note}" if note else "")
    return pa.record_batch([pa.array([plan_type]), pa.array([text])], schema=schema)


class CoordinatorService:
    """Feeds the state machine and carries out its actions; one lock guards both."""

    def __init__(self, executor_token: str | None, settings: Settings | None = None,
                 tick_s: float = 0.5, engine: SqlEngine | None = None,
                 partitions: int | None = None, broadcast_limit: int = 0,
                 direct_results: bool = False, validate_state: bool = False) -> None:
        self._token = executor_token
        self._validate = validate_state
        self._live: frozenset[ExecutorId] = frozenset()
        self._broadcast_limit = broadcast_limit
        self.direct_results = direct_results
        self._engine = engine
        self._resolved = ResolvedQueries()
        self._partitions = partitions
        self._machine = Coordinator(settings)
        self._lock = threading.Lock()
        self._addresses: dict[ExecutorId, str] = {}
        self._work_dirs: dict[ExecutorId, str] = {}  # of executors that offer in-place reads
        self._cores: dict[ExecutorId, int] = {}
        self._jobs: dict[JobId, _Job] = {}
        self._shuffle_bytes_fetched = 0  # over all jobs, as executors report it
        self._final_stages_here = 0
        self._stage_contexts: queue.SimpleQueue[StageContexts] = queue.SimpleQueue()
        self._launcher = ThreadPoolExecutor(max_workers=16, thread_name_prefix="launch")
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, args=(tick_s,), daemon=True)
        self._ticker.start()

    # -- events from executors ----------------------------------------------------------
    def control(self, kind: str, body: bytes) -> bytes:
        message = _json(body)
        executor = ExecutorId(str(message.get("executor", "")))
        if kind == REGISTER:
            address = str(message.get("address", ""))
            if not address.startswith(("grpc://", "grpc+tls://")):
                raise InvalidArgument("executor address must be a grpc:// URI")
            with self._lock:
                self._addresses[executor] = address
                self._work_dirs[executor] = str(message.get("work_dir", ""))
                self._cores[executor] = max(1, int(message.get("cores", 1)))
            self._handle(ExecutorJoined(executor, int(message.get("slots", 1)), time.monotonic()))
            log.info("executor %s joined at %s", executor, address)
        elif kind == HEARTBEAT:
            self._handle(Heartbeat(executor, time.monotonic()))
        elif kind == REPORT:
            self._report(executor, message)
        return b"{}"

    def metrics(self) -> dict[str, int]:
        with self._lock:
            counters = asdict(self._machine.metrics)
            return {**counters, "running_jobs": len(self._jobs),
                    "executors": len(self._machine.executors()),
                    "shuffle_bytes_fetched": self._shuffle_bytes_fetched,
                    "final_stages_here": self._final_stages_here}

    def _report(self, executor: ExecutorId, message: dict[str, Any]) -> None:
        attempt = _task_from(message)
        if message.get("ok"):
            log.info("task %s finished on %s", attempt.task, executor)
            job = self._jobs.get(attempt.task.job)
            if job is not None:
                fetched = int(message.get("fetched_bytes", 0))
                job.metrics[(attempt.task.stage, attempt.task.partition)] = _TaskMetrics(
                    executor, int(message.get("rows", 0)), int(message.get("bytes", 0)),
                    float(message.get("seconds", 0.0)), fetched)
                self._shuffle_bytes_fetched += fetched
            self._handle(TaskSucceeded(attempt, executor))
        elif message.get("fetch_failed"):
            lost = ExecutorId(str(message["fetch_failed"]))
            log.warning("task %s could not fetch from %s", attempt.task, lost)
            self._handle(FetchFailed(attempt, executor, lost))
        else:
            kind = str(message.get("error_kind", ""))
            reason = f"{kind}: {str(message.get('error', ''))[:300]}"
            self._handle(TaskFailed(attempt, executor, reason, fatal=kind in _QUERY_ERRORS))

    def _handle(self, event: Event) -> None:
        with self._lock:
            actions = self._machine.handle(event)
            if self._validate:
                self._machine.validate_state()
            live = self._machine.executors()
            lost = self._live - live
            self._live = live
            for executor in lost:
                self._addresses.pop(executor, None)
                self._work_dirs.pop(executor, None)
                self._cores.pop(executor, None)
        for executor in lost:
            log.warning("executor %s lost; its tasks and outputs move elsewhere", executor)
        for action in actions:
            self._carry_out(action)

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, LaunchTask):
            self._launcher.submit(self._launch, action)
        elif isinstance(action, CancelTask):
            self._launcher.submit(self._cancel, action)
        elif isinstance(action, JobFinished | StagesDone):
            job = self._jobs.get(action.job)
            if job is not None:
                if isinstance(action, JobFinished):
                    job.waiter.finished = action
                else:
                    job.waiter.stages_done = True
                job.waiter.wake.set()

    def _launch(self, launch: LaunchTask) -> None:
        job = self._jobs.get(launch.attempt.task.job)
        address = self._addresses.get(launch.executor)
        if job is None or address is None:
            return
        task = launch.attempt.task
        body: dict[str, Any] = {**_task_json(launch.attempt),
                                "default_schema": job.query.default_schema}
        if job.stages:
            with self._lock:
                addresses, work_dirs = dict(self._addresses), dict(self._work_dirs)
            body.update(encode_stage_task(job.stages[task.stage], task.partition, job.stages,
                                          launch.inputs, addresses, work_dirs))
        else:
            body["sql"] = job.text
            parameters = job.query.parameters
            if parameters is not None:
                body["parameters"] = parameters.serialize().to_pybytes().hex()
                body["parameters_schema"] = parameters.schema.serialize().to_pybytes().hex()
        try:
            _send(address, RUN_TASK, body, self._token)
        except flight.FlightError as exc:
            # An executor that cannot take a task is gone: its work moves elsewhere and
            # the task's own failure budget is kept.
            log.warning("executor %s unreachable (%s); marking it lost", launch.executor,
                        " ".join(str(exc).split())[:200])
            self._handle(ExecutorLost(launch.executor))

    def _cancel(self, cancel: CancelTask) -> None:
        """Stop the task's work; its late report would be fenced off anyway."""
        address = self._addresses.get(cancel.executor)
        if address is None:
            return
        try:
            _send(address, CANCEL_TASK, _task_json(cancel.attempt), self._token)
        except flight.FlightError as exc:
            log.warning("could not cancel %s on %s: %s", cancel.attempt.task,
                        cancel.executor, exc)

    def _tick_loop(self, tick_s: float) -> None:
        while not self._stop.wait(tick_s):
            self._handle(Tick(time.monotonic()))

    # -- queries ----------------------------------------------------------------------
    def run(self, query: PlannedQuery, is_cancelled: Callable[[], bool]
            ) -> Iterator[pa.RecordBatch]:
        """Run `query` as a job on the executors and stream its result.

        EXPLAIN adds a row with the stage plan; EXPLAIN ANALYZE runs the query on the
        executors and returns the stage plan with each stage's metrics.
        """
        explain = _EXPLAIN.match(query.text)
        if explain is None or query.schema.names != ["plan_type", "plan"]:
            yield from self._results(query, query.text, is_cancelled, query.schema)
            return
        text = query.text[explain.end():]
        planned, reason = self._resolve(query, text)
        if explain.group(1) is None:  # plain EXPLAIN: plans only, nothing runs
            stage_plan, reason = self._static_plan(planned, reason)
            yield from self._engine_stream(query, is_cancelled)
            note = _ADAPTIVE_NOTE if stage_plan is not None and self._adaptive(planned) else ""
            yield _explain_row(query.schema, "distributed_plan", stage_plan, reason, {}, note)
            return
        with self._run_job(query, text, planned, is_cancelled) as (record, _):
            yield _explain_row(query.schema, "distributed_plan_with_metrics", record.plan,
                               reason or record.reason, record.metrics)

    def _results(self, query: PlannedQuery, text: str, is_cancelled: Callable[[], bool],
                 schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        planned, _ = self._resolve(query, text)
        with self._run_job(query, text, planned, is_cancelled, final_here=True
                           ) as (record, spooled):
            if record.final_here is not None:
                yield from self._run_here(record, shuffle_readers_batches(spooled), schema,
                                          is_cancelled)
                return
            for batch in shuffle_readers_batches(spooled):
                yield conform_batch(batch, schema)

    def _run_here(self, record: _Job, batches: list[pa.RecordBatch], schema: pa.Schema,
                  is_cancelled: Callable[[], bool]) -> Iterator[pa.RecordBatch]:
        """The result stage, run in this process over the job's gathered output: a task
        on an executor would cost a launch, a report and a file to read back, for a stage
        that sorts, limits or sums what the tasks before it left."""
        final = record.final_here
        assert final is not None and self._engine is not None
        (source,) = final.inputs
        streams = task_streams(1, False, sum(b.nbytes for b in batches), os.cpu_count() or 1, 1)
        try:
            contexts = self._stage_contexts.get_nowait()
        except queue.Empty:
            contexts = StageContexts()
        try:
            with contextlib.ExitStack() as stack:
                with translated_errors():  # planning it; running it translates its own
                    _, frame = stack.enter_context(contexts.frame_over(
                        self._engine.config, final.plan, streams,
                        {source: (record.stages[source].schema, batches)}))
                rows = 0
                for batch in self._engine.run_frame(frame, schema, is_cancelled):
                    rows += batch.num_rows
                    yield batch
            with self._lock:
                self._final_stages_here += 1
            log.info("ran the result stage %s here: %d rows", final.stage, rows)
        finally:
            self._stage_contexts.put(contexts)

    @contextlib.contextmanager
    def _run_job(self, query: PlannedQuery, text: str, planned: DistributedQuery | None,
                 is_cancelled: Callable[[], bool], final_here: bool = False
                 ) -> Iterator[tuple[_Job, list[pa.ipc.RecordBatchFileReader]]]:
        """Run the query as a job and open its result files (fetched into local files, or
        in place), before the client sees a row: an executor lost while its result
        partition is read costs a rerun of the job, never a broken or doubled stream. The
        executors drop the job's files once the result is sent: dropping them while the
        coordinator ran the result stage slowed it (their calls and its own compete for
        the same cores)."""
        with tempfile.TemporaryDirectory(prefix="krishiv-result-") as spool:
            for _ in range(_RESULT_ATTEMPTS):
                job, finished = self._execute(query, text, planned, is_cancelled, final_here)
                try:
                    record = self._jobs[job]
                    readers = self._spool(job, finished, Path(spool))
                except _ResultLost as lost:
                    self._forget(job)
                    log.warning("result of %s lost with %s (%s); running the job again",
                                job, lost.executor, lost)
                    self._handle(ExecutorLost(lost.executor))
                    continue
                except BaseException:
                    self._forget(job)
                    raise
                try:
                    yield record, readers
                finally:
                    self._forget(job)
                return
            raise Unavailable(f"the query's result was lost {_RESULT_ATTEMPTS} times")

    def _spool(self, job: JobId, finished: JobFinished, folder: Path
               ) -> list[pa.ipc.RecordBatchFileReader]:
        """The final stage's output partitions, opened: in place when the executor's work
        dir is on this machine, else fetched into `folder`. They are opened before the
        job's files are dropped."""
        final = self._final_stage(job)
        readers = []
        for location in finished.results:
            key = ShuffleKey(job, final, location.stage_attempt, 0, location.partition,
                             location.attempt)
            here = shuffle_file_here(self._work_dirs.get(location.executor, ""),
                                     location.executor, key)
            if here is not None:
                with contextlib.suppress(OSError):  # gone meanwhile: fetch it instead
                    readers.append(open_shuffle_file(here))
                    continue
            path = folder / f"{job}-{location.partition}.arrows"
            try:
                _fetch_to_file(self._addresses[location.executor], key, self._token, path)
            except flight.FlightError as exc:
                raise _ResultLost(location.executor, exc) from None
            readers.append(open_shuffle_file(path))
        return readers

    def _resolve(self, query: PlannedQuery, text: str) -> tuple[DistributedQuery | None, str]:
        """The query ready to be cut into stages, or None and the reason it runs as one
        task."""
        if self._engine is None:
            return None, "this coordinator has no stage planner"
        try:
            return self._resolved.resolve(self._engine, text, query.default_schema,
                                          query.parameters, self.shuffle_partitions(),
                                          self._broadcast_limit), ""
        except EngineError as exc:
            return None, str(exc)

    def shuffle_partitions(self) -> int:
        """The configured partitions, else the cores of the machines running executors:
        executors on one machine share its cores, and more tasks than cores add per-task
        costs and split work that one stream per core would do anyway."""
        if self._partitions is not None:
            return self._partitions
        with self._lock:
            per_machine: dict[str, int] = {}
            for executor, address in self._addresses.items():
                machine = urllib.parse.urlsplit(address).hostname or address
                per_machine[machine] = max(per_machine.get(machine, 0),
                                           self._cores.get(executor, 1))
        # No executor yet: the ones `serve --executors` starts will share this machine.
        cores = sum(per_machine.values()) or os.cpu_count() or 1
        return max(MIN_SHUFFLE_PARTITIONS, cores)

    @staticmethod
    def _cut(planned: DistributedQuery, observed: dict[StageId, int] | None = None
             ) -> tuple[StagePlan | None, str]:
        """The query's stages (see DistributedQuery.plan), or None and the reason it
        runs as one task."""
        try:
            return planned.plan(observed), ""
        except EngineError as exc:
            return None, str(exc)

    def _static_plan(self, planned: DistributedQuery | None, reason: str
                     ) -> tuple[StagePlan | None, str]:
        """The stages as planned from file sizes alone (what EXPLAIN shows)."""
        return (None, reason) if planned is None else self._cut(planned)

    def _adaptive(self, planned: DistributedQuery | None) -> bool:
        """Whether run-time sizes may change the plan EXPLAIN shows."""
        stage_plan = None if planned is None else self._cut(planned, {})[0]
        return stage_plan is not None and stage_plan.probe is not None

    def _execute(self, query: PlannedQuery, text: str, planned: DistributedQuery | None,
                 is_cancelled: Callable[[], bool], final_here: bool = False
                 ) -> tuple[JobId, JobFinished]:
        """Run the query as a job to its end; a plan with probe stages is submitted in
        steps, each planned once the stages before it are done and their sizes known.
        With `final_here`, a result stage that only gathers the stage before it is left
        out of the job (in its `final_here`), for the caller to run."""
        observed: dict[StageId, int] = {}
        stage_plan, reason = self._next_plan(planned, observed, query, text)
        stage_plan, final = final_apart(stage_plan, final_here, 0)
        job = self._submit(query, text, stage_plan, reason)
        self._jobs[job].final_here = final
        try:
            while stage_plan is not None and stage_plan.probe is not None:
                self._wait(job, is_cancelled, stages_done=True)
                observed[stage_plan.probe] = self._written(job, stage_plan.probe)
                following, reason = self._next_plan(planned, observed, query, text)
                following, final = final_apart(following, final_here,
                                                len(stage_plan.stages))
                if following is None:  # the rest cannot be cut: run the query whole
                    self._handle(JobCancelled(job))
                    self._forget(job)
                    job = self._submit(query, text, None, reason)
                else:
                    self._extend(job, stage_plan, following)
                    self._jobs[job].final_here = final
                stage_plan = following
            finished = self._wait(job, is_cancelled)
        except BaseException:
            self._forget(job)
            raise
        assert finished is not None
        return job, finished

    def _next_plan(self, planned: DistributedQuery | None, observed: dict[StageId, int],
                   query: PlannedQuery, text: str) -> tuple[StagePlan | None, str]:
        if planned is None:
            return None, ""
        stage_plan, reason = self._cut(planned, observed)
        if stage_plan is None or stage_plan.probe is not None:
            return stage_plan, reason
        *stages, result = stage_plan.stages
        if text is query.text and len(result.schema) == len(query.schema):
            # The result stage writes the very schema the client was promised.
            stage_plan = StagePlan((*stages, replace(result, schema=query.schema)))
        return stage_plan, ""

    def _written(self, job: JobId, stage: StageId) -> int:
        """The bytes a finished stage's tasks wrote."""
        metrics = list(self._jobs[job].metrics.items())  # reports may still come in
        return sum(m.bytes for (s, _), m in metrics if s == stage)

    def _extend(self, job: JobId, submitted: StagePlan, following: StagePlan) -> None:
        """Add the stages `following` plans after those already `submitted`."""
        done = len(submitted.stages)
        if following.stages[:done] != submitted.stages:
            raise RuntimeError("adaptive planning changed stages that already ran")
        record = self._jobs[job]
        added = following.stages[done:]
        record.stages.update((s.stage, s) for s in added)
        record.plan = following
        self._handle(StagesAdded(job, tuple(StageSpec(s.stage, s.tasks, s.inputs)
                                            for s in added), following.probe is not None))

    def _submit(self, query: PlannedQuery, text: str, stage_plan: StagePlan | None,
                reason: str = "") -> JobId:
        job = JobId(str(uuid.uuid4()))
        stages = {s.stage: s for s in stage_plan.stages} if stage_plan else {}
        self._jobs[job] = _Job(query, text, stages, _Waiter(threading.Event()), stage_plan,
                               reason)
        specs = (tuple(StageSpec(s.stage, s.tasks, s.inputs) for s in stage_plan.stages)
                 if stage_plan else (StageSpec(_SQL_STAGE, 1),))
        more = stage_plan is not None and stage_plan.probe is not None
        self._handle(JobSubmitted(job, specs, time.monotonic(), more))
        return job

    def direct_endpoints(self, query: PlannedQuery, is_cancelled: Callable[[], bool]
                         ) -> list[tuple[bytes, str]] | None:
        """With --direct-results: run the query now and return (ticket, executor URI) for
        each result partition, for the client to fetch from the executors; None when the
        query's result comes through the coordinator (EXPLAIN)."""
        if not self.direct_results or _EXPLAIN.match(query.text):
            return None
        planned, _ = self._resolve(query, query.text)
        job, finished = self._execute(query, query.text, planned, is_cancelled)
        final = self._final_stage(job)
        expires = time.time() + RESULT_TTL_S
        endpoints = []
        for location in finished.results:
            key = ShuffleKey(job, final, location.stage_attempt, 0, location.partition,
                             location.attempt)
            ticket = (sign_result_ticket(key, self._token, expires) if self._token
                      else key.ticket())
            endpoints.append((ticket, self._addresses[location.executor]))
        self._jobs.pop(job, None)
        # The client reads the files later: they go when the tickets expire.
        timer = threading.Timer(RESULT_TTL_S, self._drop_everywhere, (job,))
        timer.daemon = True
        timer.start()
        return endpoints

    def _wait(self, job: JobId, is_cancelled: Callable[[], bool], stages_done: bool = False
              ) -> JobFinished | None:
        """The job's end (or None once its stages so far are done, if `stages_done`);
        cancels it if the client does, raises if it failed."""
        waiter = self._jobs[job].waiter
        while True:
            waiter.wake.clear()
            finished = waiter.finished
            if finished is not None:
                break
            if stages_done and waiter.stages_done:
                waiter.stages_done = False
                return None
            if not waiter.wake.wait(0.05) and is_cancelled():
                self._handle(JobCancelled(job))
                raise Cancelled("query cancelled by the client")
        if finished.state is not JobState.SUCCEEDED:
            raise _client_error(finished.reason)
        return finished

    def _final_stage(self, job: JobId) -> StageId:
        stages = self._jobs[job].stages
        return max(stages) if stages else _SQL_STAGE

    def _forget(self, job: JobId) -> None:
        self._jobs.pop(job, None)
        self._launcher.submit(self._drop_everywhere, job)

    def _engine_stream(self, query: PlannedQuery, is_cancelled: Callable[[], bool]
                       ) -> Iterator[pa.RecordBatch]:
        if self._engine is not None:
            yield from self._engine.stream(query, is_cancelled)

    def _drop_everywhere(self, job: JobId) -> None:
        """Ask every executor to delete the job's shuffle files (best effort)."""
        for address in list(self._addresses.values()):
            try:
                _send(address, DROP_JOB, {"job": job}, self._token)
            except flight.FlightError as exc:
                log.warning("could not drop job %s files at %s: %s", job, address, exc)

    def close(self) -> None:
        self._stop.set()
        self._launcher.shutdown(wait=False, cancel_futures=True)


def final_apart(stage_plan: StagePlan | None, wanted: bool, submitted: int
                 ) -> tuple[StagePlan | None, StageDef | None]:
    """The plan without its result stage, and that stage, when the result stage is one
    task over only the gathered output of the stage before it (and that stage is not
    among the `submitted` first ones); else the plan as it is."""
    if not wanted or stage_plan is None or stage_plan.probe is not None:
        return stage_plan, None
    *before, final = stage_plan.stages
    if (len(before) <= submitted or final.tasks != 1 or final.scans
            or final.inputs != (before[-1].stage,)
            or before[-1].output.kind is not ExchangeKind.GATHER):
        return stage_plan, None
    return StagePlan(tuple(before)), final


def _output_key(attempt: TaskAttempt) -> ShuffleKey:
    """The key of a task's output (partition 0; the others differ only there)."""
    task = attempt.task
    return ShuffleKey(task.job, task.stage, task.stage_attempt, 0, task.partition,
                      attempt.attempt)


class _ResultLost(Exception):
    def __init__(self, executor: ExecutorId, cause: Exception) -> None:
        super().__init__(" ".join(str(cause).split())[:200])
        self.executor = executor


class _FetchFailed(Exception):
    def __init__(self, executor: ExecutorId, cause: Exception) -> None:
        super().__init__(f"fetch from {executor} failed: {' '.join(str(cause).split())[:200]}")
        self.executor = executor


def task_streams(stage_tasks: int, scans: bool, input_bytes: int, cores: int, slots: int
                 ) -> int:
    """DataFusion streams for one task: a stage's only task (a gather, a final sort)
    gets all the cores, unless all it reads is a few exchanged rows, which streams only
    split and merge again (TPC-H q1's last aggregate of 8 rows: 11 ms in one stream, 29
    in two); otherwise the task slots share the cores, since more streams than a task's
    share only re-hash rows between streams (tasks already get hash-partitioned inputs)."""
    if stage_tasks > 1:
        return max(1, cores // slots)
    if not scans and input_bytes <= SMALL_INPUT_BYTES:
        return 1
    return cores


class ExecutorAgent:
    """Registers with the coordinator, heartbeats, and runs the tasks it is sent."""

    def __init__(self, coordinator: str, token: str | None, address: str, work_dir: Path,
                 engine: SqlEngine, slots: int = TASK_SLOTS, heartbeat_s: float = 1.0,
                 faults: Faults | None = None, local_reads: bool = True) -> None:
        self.id = ExecutorId(f"executor-{uuid.uuid4().hex[:12]}")
        self._faults = faults or Faults()
        self._coordinator = coordinator
        self._token = token
        self._address = address
        self._work_dir = work_dir
        self._engine = engine
        self._slots = slots
        self._local_reads = local_reads
        self._cores = os.cpu_count() or 1
        self._runner = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="task")
        self._cancelled: dict[TaskAttempt, threading.Event] = {}
        # Jobs dropped lately: a task of one still running writes its output after the
        # drop, and that output goes too.
        self._dropped: OrderedDict[str, None] = OrderedDict()
        self._dropped_lock = threading.Lock()
        # Bytes of other executors' files a running task read: fetched, or in place.
        self._fetched: dict[TaskAttempt, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, args=(heartbeat_s,),
                                        daemon=True)

    def start(self) -> None:
        work_dir = ""
        if self._local_reads:
            self._work_dir.mkdir(parents=True, exist_ok=True)
            (self._work_dir / WORK_DIR_OWNER).write_text(self.id)
            work_dir = str(self._work_dir)
        self._call(REGISTER, {"address": self._address, "slots": self._slots,
                              "cores": self._cores, "work_dir": work_dir})
        self._thread.start()

    def _call(self, kind: str, body: dict[str, Any]) -> None:
        _send(self._coordinator, kind, {"executor": self.id, **body}, self._token)

    def _heartbeat_loop(self, heartbeat_s: float) -> None:
        last_ok = time.monotonic()
        last_sweep = time.monotonic()
        while not self._stop.wait(heartbeat_s):
            if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                last_sweep = time.monotonic()
                for job in sweep_work_dir(self._work_dir, SHUFFLE_TTL_S, time.time()):
                    log.warning("removed shuffle files of job %s, idle for %.0f s", job,
                                SHUFFLE_TTL_S)
                sweep_links(self._work_dir / LINKS_DIR, LINKS_TTL_S, time.time())
            try:
                self._call(HEARTBEAT, {})
                last_ok = time.monotonic()
            except flight.FlightError as exc:
                log.warning("heartbeat to %s failed: %s", self._coordinator, exc)
                if time.monotonic() - last_ok > COORDINATOR_GONE_S:
                    log.error("coordinator %s unreachable for %.0f s; exiting",
                              self._coordinator, COORDINATOR_GONE_S)
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

    def run_task(self, body: bytes) -> None:
        message = _json(body)
        attempt = _task_from(message)
        self._cancelled[attempt] = threading.Event()
        self._runner.submit(self._run, attempt, message)

    def cancel_task(self, body: bytes) -> None:
        attempt = _task_from(_json(body))
        event = self._cancelled.get(attempt)
        log.info("cancel %s: %s", attempt.task, "running" if event else "not running")
        if event is not None:
            event.set()

    def _run(self, attempt: TaskAttempt, message: dict[str, Any]) -> None:
        task = attempt.task
        started = time.monotonic()
        try:
            self._faults.at(FaultPoint.TASK_START, attempt)
            if "plan" in message:
                counts = self._run_stage(attempt, message)
            else:
                counts = self._run_sql(attempt, message)
            self._faults.at(FaultPoint.AFTER_WRITE, attempt)
            output = _output_key(attempt)
            size = sum(replace(output, partition=p).path(self._work_dir).stat().st_size
                       for p in counts)
            report: dict[str, Any] = {**_task_json(attempt), "ok": True,
                                      "rows": sum(counts.values()), "bytes": size,
                                      "fetched_bytes": self._fetched.get(attempt, 0),
                                      "seconds": round(time.monotonic() - started, 4)}
        except _FetchFailed as exc:
            log.warning("task %s: %s", task, exc)
            report = {**_task_json(attempt), "ok": False, "fetch_failed": exc.executor}
        except Exception as exc:  # reported to the coordinator, which retries or fails
            log.info("task %s failed: %s", task, type(exc).__name__)
            report = {**_task_json(attempt), "ok": False, "error_kind": type(exc).__name__,
                      "error": " ".join(str(exc).split())}
        finally:
            self._cancelled.pop(attempt, None)
            self._fetched.pop(attempt, None)
            with self._dropped_lock:
                dropped = task.job in self._dropped
            if dropped:
                shutil.rmtree(self._work_dir / task.job, ignore_errors=True)
        try:
            self._call(REPORT, report)
        except flight.FlightError as exc:
            log.warning("report of %s failed: %s", task, exc)

    def _run_sql(self, attempt: TaskAttempt, message: dict[str, Any]) -> dict[int, int]:
        """A query the planner could not cut: plan its SQL here and run all of it."""
        parameters = None
        if "parameters" in message:
            schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(
                message["parameters_schema"])))
            parameters = pa.ipc.read_record_batch(
                pa.py_buffer(bytes.fromhex(message["parameters"])), schema)
        session = self._engine.session(str(message.get("default_schema") or "") or None)
        planned = session.plan(str(message["sql"]), parameters)
        output = MapOutput(self._work_dir, _output_key(attempt), (), 1)
        return self._engine.write_map_output(planned, output, self._cancelled[attempt].is_set,
                                             self._mid_shuffle(attempt))

    def _run_stage(self, attempt: TaskAttempt, message: dict[str, Any]) -> dict[int, int]:
        """One task of a stage: fetch its inputs, run its plan, write its partitions."""
        task = attempt.task
        try:
            stage = decode_stage_task(message)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed stage task: {exc}") from None
        scratch = (self._work_dir / task.job / "tasks"
                   / f"{task.stage}.{task.stage_attempt}.{task.partition}.{attempt.attempt}")
        try:
            inputs = {
                source.stage: (source.schema, self._fetch(attempt, source, scratch))
                for source in stage.inputs
            }
            output = MapOutput(self._work_dir, _output_key(attempt),
                               tuple(f"c{k}" for k in stage.output_keys),
                               stage.output_partitions)
            input_bytes = sum(path.stat().st_size for _, paths in inputs.values()
                              for path in paths)
            streams = task_streams(stage.tasks, bool(stage.scans), input_bytes, self._cores,
                                   self._slots)
            return self._engine.write_stage_output(
                StageTask(stage.plan, stage.schema, stage.scans, inputs,
                          self._work_dir / LINKS_DIR, streams),
                output, self._cancelled[attempt].is_set, self._mid_shuffle(attempt))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _mid_shuffle(self, attempt: TaskAttempt) -> Callable[[], None]:
        return lambda: self._faults.at(FaultPoint.MID_SHUFFLE, attempt)

    def _fetch(self, attempt: TaskAttempt, source: StageInput, scratch: Path
               ) -> tuple[Path, ...]:
        """Local paths of this task's partitions of every map output of `source`.

        Files this executor wrote are read in place; others come over Flight DoGet.
        """
        return tuple(self._fetch_one(attempt, source, origin, partition, scratch)
                     for origin in source.sources for partition in source.partitions)

    def _fetch_one(self, attempt: TaskAttempt, source: StageInput, origin: InputSource,
                   partition: int, scratch: Path) -> Path:
        key = ShuffleKey(attempt.task.job, source.stage, origin.stage_attempt, partition,
                         origin.map_task, origin.attempt)
        if origin.executor == self.id:
            return key.path(self._work_dir)
        in_place = self._in_place(origin, key)
        if in_place is not None:
            size = in_place.stat().st_size
            self._fetched[attempt] = self._fetched.get(attempt, 0) + size
            log.info("%s read stage %s partition %s of map task %s of %s in place: %d "
                     "bytes (task %s)", self.id, source.stage, partition, origin.map_task,
                     origin.executor, size, attempt.task)
            return in_place
        target = scratch / "fetched" / f"{source.stage}-{origin.map_task}-{partition}.arrows"
        try:
            written = _fetch_to_file(origin.address, key, self._token, target, source.schema)
        except flight.FlightError as exc:
            raise _FetchFailed(origin.executor, exc) from None
        self._fetched[attempt] = self._fetched.get(attempt, 0) + written.bytes
        log.info("%s fetched stage %s partition %s of map task %s from %s over Flight: %d "
                 "rows, %d bytes (task %s)", self.id, source.stage, partition,
                 origin.map_task, origin.executor, written.rows, written.bytes, attempt.task)
        return target

    def _in_place(self, origin: InputSource, key: ShuffleKey) -> Path | None:
        if not self._local_reads:
            return None
        return shuffle_file_here(origin.work_dir, origin.executor, key)

    def drop_job(self, body: bytes) -> None:
        job = str(_json(body).get("job", ""))
        try:
            canonical = str(uuid.UUID(job))
        except ValueError:
            raise InvalidArgument("job id must be a UUID") from None
        if canonical != job:
            raise InvalidArgument("job id must be a canonical UUID")
        with self._dropped_lock:
            self._dropped[job] = None
            while len(self._dropped) > DROPPED_JOBS_KEPT:
                self._dropped.popitem(last=False)
        shutil.rmtree(self._work_dir / job, ignore_errors=True)

    def close(self) -> None:
        self._stop.set()
        self._runner.shutdown(wait=False, cancel_futures=True)
