"""The distributed runtime's I/O: the coordinator service around the job state machine,
and the executor agent that registers, heartbeats and runs tasks.

Control calls are Flight actions with JSON bodies, authenticated by the executor token.
Today every query runs as one task (one stage, one partition) on one executor; the stage
planner that splits queries is still to come.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from engine import PlannedQuery, SqlEngine
from engine.arrow_types import conform_batch
from engine.distributed.ids import Attempt, ExecutorId, JobId, StageId, TaskAttempt, TaskId
from engine.distributed.shuffle import ShuffleKey, write_map_output
from engine.distributed.state import (
    Action,
    CancelTask,
    Coordinator,
    Event,
    ExecutorJoined,
    ExecutorLost,
    Heartbeat,
    JobCancelled,
    JobFinished,
    JobState,
    JobSubmitted,
    LaunchTask,
    Settings,
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
from flight_server.errors import Cancelled, InvalidArgument, Unavailable

log = logging.getLogger("krishiv.cluster")

REGISTER = "krishiv.executor.register"
HEARTBEAT = "krishiv.executor.heartbeat"
REPORT = "krishiv.task.report"
RUN_TASK = "krishiv.task.run"
DROP_JOB = "krishiv.job.drop"  # delete a finished job's shuffle files
CANCEL_TASK = "krishiv.task.cancel"

_RESULT_STAGE = StageId(0)
_EXPLAIN = re.compile(r"^\s*EXPLAIN\b", re.IGNORECASE)
# An executor whose coordinator stays unreachable this long stops itself.
COORDINATOR_GONE_S = 30.0


def _options(token: str | None) -> flight.FlightCallOptions:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers, timeout=30)


def _send(address: str, kind: str, body: dict[str, Any], token: str | None) -> None:
    """One control action to another node, its JSON `body` as the action body."""
    client = flight.connect(address)
    try:
        list(client.do_action(flight.Action(kind, json.dumps(body).encode()), _options(token)))
    finally:
        client.close()


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
    done: threading.Event
    finished: JobFinished | None = None


class CoordinatorService:
    """Feeds the state machine and carries out its actions; one lock guards both."""

    def __init__(self, executor_token: str | None, settings: Settings | None = None,
                 tick_s: float = 0.5) -> None:
        self._token = executor_token
        self._machine = Coordinator(settings)
        self._lock = threading.Lock()
        self._addresses: dict[ExecutorId, str] = {}
        self._tasks: dict[JobId, PlannedQuery] = {}
        self._waiters: dict[JobId, _Waiter] = {}
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
            self._handle(ExecutorJoined(executor, int(message.get("slots", 1)), time.monotonic()))
            log.info("executor %s joined at %s", executor, address)
        elif kind == HEARTBEAT:
            self._handle(Heartbeat(executor, time.monotonic()))
        elif kind == REPORT:
            attempt = _task_from(message)
            if message.get("ok"):
                log.info("task %s finished on %s", attempt.task, executor)
                self._handle(TaskSucceeded(attempt, executor))
            else:
                kind = str(message.get("error_kind", ""))
                reason = f"{kind}: {str(message.get('error', ''))[:300]}"
                self._handle(TaskFailed(attempt, executor, reason, fatal=kind in _QUERY_ERRORS))
        return b"{}"

    def _handle(self, event: Event) -> None:
        with self._lock:
            actions = self._machine.handle(event)
        for action in actions:
            self._carry_out(action)

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, LaunchTask):
            self._launcher.submit(self._launch, action)
        elif isinstance(action, CancelTask):
            self._launcher.submit(self._cancel, action)
        elif isinstance(action, JobFinished):
            waiter = self._waiters.get(action.job)
            if waiter is not None:
                waiter.finished = action
                waiter.done.set()

    def _launch(self, launch: LaunchTask) -> None:
        query = self._tasks.get(launch.attempt.task.job)
        address = self._addresses.get(launch.executor)
        if query is None or address is None:
            return
        body = {**_task_json(launch.attempt), "sql": query.text,
                "default_schema": query.default_schema}
        if query.parameters is not None:
            body["parameters"] = query.parameters.serialize().to_pybytes().hex()
            body["parameters_schema"] = query.parameters.schema.serialize().to_pybytes().hex()
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
        """Run `query` as a job on the executors and stream its result."""
        job = JobId(str(uuid.uuid4()))
        waiter = _Waiter(threading.Event())
        self._tasks[job] = query
        self._waiters[job] = waiter
        try:
            self._handle(JobSubmitted(job, (StageSpec(_RESULT_STAGE, 1),), time.monotonic()))
            while not waiter.done.wait(0.05):
                if is_cancelled():
                    self._handle(JobCancelled(job))
                    raise Cancelled("query cancelled by the client")
            finished = waiter.finished
            assert finished is not None
            if finished.state is not JobState.SUCCEEDED:
                raise _client_error(finished.reason)
            for location in finished.results:
                key = ShuffleKey(job, _RESULT_STAGE, location.stage_attempt, 0,
                                 location.partition, location.attempt)
                client = flight.connect(self._addresses[location.executor])
                reader = client.do_get(flight.Ticket(key.ticket()), _options(self._token))
                for chunk in reader:
                    yield conform_batch(chunk.data, query.schema)
                client.close()
            distributed_plan = self.explain(query)
            if distributed_plan is not None:
                yield distributed_plan
        finally:
            self._tasks.pop(job, None)
            self._waiters.pop(job, None)
            self._launcher.submit(self._drop_everywhere, job)

    def explain(self, query: PlannedQuery) -> pa.RecordBatch | None:
        """The distributed plan as an extra EXPLAIN row, for EXPLAIN queries."""
        if not _EXPLAIN.match(query.text) or query.schema.names != ["plan_type", "plan"]:
            return None
        with self._lock:
            executors = len(self._addresses)
        plan = (f"Stage {_RESULT_STAGE}: 1 task (gather) on one of {executors} executors; "
                "the whole query runs in that task because the stage planner does not split "
                "queries into stages yet")
        return pa.record_batch([pa.array(["distributed_plan"]), pa.array([plan])],
                               schema=query.schema)

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


class ExecutorAgent:
    """Registers with the coordinator, heartbeats, and runs the tasks it is sent."""

    def __init__(self, coordinator: str, token: str | None, address: str, work_dir: Path,
                 engine: SqlEngine, slots: int = 2, heartbeat_s: float = 1.0) -> None:
        self.id = ExecutorId(f"executor-{uuid.uuid4().hex[:12]}")
        self._coordinator = coordinator
        self._token = token
        self._address = address
        self._work_dir = work_dir
        self._engine = engine
        self._slots = slots
        self._runner = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="task")
        self._cancelled: dict[TaskAttempt, threading.Event] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat_loop, args=(heartbeat_s,),
                                        daemon=True)

    def start(self) -> None:
        self._call(REGISTER, {"address": self._address, "slots": self._slots})
        self._thread.start()

    def _call(self, kind: str, body: dict[str, Any]) -> None:
        _send(self._coordinator, kind, {"executor": self.id, **body}, self._token)

    def _heartbeat_loop(self, heartbeat_s: float) -> None:
        last_ok = time.monotonic()
        while not self._stop.wait(heartbeat_s):
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
        try:
            parameters = None
            if "parameters" in message:
                schema = pa.ipc.read_schema(pa.py_buffer(bytes.fromhex(
                    message["parameters_schema"])))
                parameters = pa.ipc.read_record_batch(
                    pa.py_buffer(bytes.fromhex(message["parameters"])), schema)
            session = self._engine.session(str(message.get("default_schema") or "") or None)
            planned = session.plan(str(message["sql"]), parameters)
            key = ShuffleKey(task.job, task.stage, task.stage_attempt, 0, task.partition,
                             attempt.attempt)
            cancelled = self._cancelled[attempt].is_set
            write_map_output(self._work_dir, key, self._engine.stream(planned, cancelled),
                             planned.schema, [], 1)
            report: dict[str, Any] = {**_task_json(attempt), "ok": True}
        except Exception as exc:  # reported to the coordinator, which retries or fails
            log.info("task %s failed: %s", task, type(exc).__name__)
            report = {**_task_json(attempt), "ok": False, "error_kind": type(exc).__name__,
                      "error": " ".join(str(exc).split())}
        finally:
            self._cancelled.pop(attempt, None)
        try:
            self._call(REPORT, report)
        except flight.FlightError as exc:
            log.warning("report of %s failed: %s", task, exc)

    def drop_job(self, body: bytes) -> None:
        job = str(_json(body).get("job", ""))
        try:
            canonical = str(uuid.UUID(job))
        except ValueError:
            raise InvalidArgument("job id must be a UUID") from None
        if canonical != job:
            raise InvalidArgument("job id must be a canonical UUID")
        shutil.rmtree(self._work_dir / job, ignore_errors=True)

    def close(self) -> None:
        self._stop.set()
        self._runner.shutdown(wait=False, cancel_futures=True)
