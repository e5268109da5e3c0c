"""The coordinator's job state machine: events in, actions out, no I/O and no clock.

The coordinator service feeds it events (executors joining and leaving, task reports,
ticks of its clock) and carries out the actions it returns (launch or cancel a task,
report a job's end). Fencing lives here: a report from an attempt that is no longer
current, or from a lost executor, changes nothing and is counted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.distributed.ids import Attempt, ExecutorId, JobId, StageId, TaskAttempt, TaskId


class JobState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class StageSpec:
    stage: StageId
    partitions: int
    inputs: tuple[StageId, ...] = ()


@dataclass(frozen=True)
class Settings:
    max_task_failures: int = 4
    heartbeat_timeout_s: float = 10.0
    no_executor_grace_s: float = 30.0


# -- events -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorJoined:
    executor: ExecutorId
    slots: int
    now: float


@dataclass(frozen=True)
class Heartbeat:
    executor: ExecutorId
    now: float


@dataclass(frozen=True)
class ExecutorLost:
    executor: ExecutorId


@dataclass(frozen=True)
class JobSubmitted:
    job: JobId
    stages: tuple[StageSpec, ...]  # the last one produces the job's result
    now: float
    more: bool = False  # the last stage is a probe: more stages come once it is done


@dataclass(frozen=True)
class StagesAdded:
    """The job's next stages, planned once its probe stage was done."""

    job: JobId
    stages: tuple[StageSpec, ...]
    more: bool = False


@dataclass(frozen=True)
class TaskSucceeded:
    attempt: TaskAttempt
    executor: ExecutorId


@dataclass(frozen=True)
class TaskFailed:
    attempt: TaskAttempt
    executor: ExecutorId
    reason: str
    fatal: bool = False  # the query itself is wrong: retrying cannot help


@dataclass(frozen=True)
class FetchFailed:
    """A task could not read map output held by `lost`; that executor's outputs are gone."""

    attempt: TaskAttempt
    executor: ExecutorId
    lost: ExecutorId


@dataclass(frozen=True)
class JobCancelled:
    job: JobId


@dataclass(frozen=True)
class Tick:
    now: float


Event = (ExecutorJoined | Heartbeat | ExecutorLost | JobSubmitted | StagesAdded | TaskSucceeded
         | TaskFailed | FetchFailed | JobCancelled | Tick)


# -- actions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputLocation:
    """Where one finished task's output can be read."""

    partition: int
    executor: ExecutorId
    stage_attempt: Attempt
    attempt: Attempt


@dataclass(frozen=True)
class LaunchTask:
    attempt: TaskAttempt
    executor: ExecutorId
    inputs: dict[StageId, tuple[OutputLocation, ...]]


@dataclass(frozen=True)
class CancelTask:
    attempt: TaskAttempt
    executor: ExecutorId


@dataclass(frozen=True)
class JobFinished:
    job: JobId
    state: JobState
    reason: str = ""
    results: tuple[OutputLocation, ...] = ()


@dataclass(frozen=True)
class StagesDone:
    """Every stage of a job submitted with more to come is done: plan the rest."""

    job: JobId


Action = LaunchTask | CancelTask | JobFinished | StagesDone


# -- state ------------------------------------------------------------------------------
_ENDED_KEPT = 10_000  # ended jobs whose final state is remembered
def _first() -> Attempt:
    return Attempt(0)


@dataclass
class _Task:
    partition: int
    state: TaskState = TaskState.PENDING
    attempt: Attempt = field(default_factory=_first)
    failures: int = 0
    executor: ExecutorId | None = None  # running on, or holding the output of
    done_in: Attempt = field(default_factory=_first)  # the stage attempt that wrote the output


@dataclass
class _Stage:
    spec: StageSpec
    attempt: Attempt = field(default_factory=_first)
    tasks: list[_Task] = field(default_factory=list)

    def complete(self) -> bool:
        return all(t.state is TaskState.DONE for t in self.tasks)

    def task_id(self, job: JobId, task: _Task) -> TaskId:
        return TaskId(job, self.spec.stage, self.attempt, task.partition)

    def outputs(self) -> tuple[OutputLocation, ...]:
        return tuple(OutputLocation(t.partition, t.executor, t.done_in, t.attempt)
                     for t in self.tasks
                     if t.state is TaskState.DONE and t.executor is not None)


@dataclass
class _Job:
    id: JobId
    stages: dict[StageId, _Stage]
    final: StageId
    state: JobState = JobState.RUNNING
    # Since when it has waited with no executor at all: each job gets the whole grace.
    stranded_since: float | None = None
    more: bool = False  # more stages to come after `final`


@dataclass
class _Executor:
    slots: int
    last_seen: float
    running: int = 0
    launched: int = 0  # tasks ever given to it: ties go to the least used


@dataclass
class Metrics:
    rejected_reports: int = 0  # fenced: stale attempt or lost executor
    task_retries: int = 0
    recomputed_outputs: int = 0


class Coordinator:
    """Owns every job's state; `handle` is the only way in."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.metrics = Metrics()
        self._jobs: dict[JobId, _Job] = {}  # running jobs
        self._ended: dict[JobId, JobState] = {}
        self._executors: dict[ExecutorId, _Executor] = {}

    def job_state(self, job: JobId) -> JobState:
        running = self._jobs.get(job)
        return running.state if running is not None else self._ended[job]

    def executors(self) -> frozenset[ExecutorId]:
        return frozenset(self._executors)

    def validate_state(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (run after every event
        in tests)."""
        running: dict[ExecutorId, int] = dict.fromkeys(self._executors, 0)
        for job in self._jobs.values():
            assert job.state is JobState.RUNNING, f"job {job.id}: ended but not retired"
            assert job.id not in self._ended, f"job {job.id}: both running and ended"
            for stage in job.stages.values():
                for task in stage.tasks:
                    where = f"job {job.id} stage {stage.spec.stage} task {task.partition}"
                    if task.state is TaskState.PENDING:
                        assert task.executor is None, f"{where}: pending but placed"
                        continue
                    assert task.executor in self._executors, (
                        f"{where}: {task.state.value} on unknown executor {task.executor}")
                    if task.state is TaskState.RUNNING:
                        running[task.executor] += 1
                    assert task.done_in <= stage.attempt, f"{where}: output from the future"
        for executor, state in self._executors.items():
            assert state.running == running[executor], (
                f"executor {executor}: counts {state.running} running, has {running[executor]}")
            assert 0 <= state.running <= state.slots, f"executor {executor}: over its slots"

    def handle(self, event: Event) -> list[Action]:
        actions: list[Action] = []
        match event:
            case ExecutorJoined(executor, slots, now):
                self._executors[executor] = _Executor(slots, now)
            case Heartbeat(executor, now):
                if executor in self._executors:
                    self._executors[executor].last_seen = now
            case ExecutorLost(executor):
                self._lose(executor, actions)
            case JobSubmitted(job, stages, now, more):
                self._submit(job, stages, now, more)
            case StagesAdded(job, stages, more):
                self._add_stages(job, stages, more)
            case TaskSucceeded(attempt, executor):
                self._succeeded(attempt, executor, actions)
            case TaskFailed(attempt, executor, reason, fatal):
                self._failed(attempt, executor, reason, fatal, actions)
            case FetchFailed(attempt, executor, lost):
                self._fetch_failed(attempt, executor, lost, actions)
            case JobCancelled(job):
                self._end(job, JobState.CANCELLED, "cancelled", actions)
            case Tick(now):
                self._tick(now, actions)
        self._schedule(actions)
        return actions

    # -- events -----------------------------------------------------------------------
    def _submit(self, job: JobId, specs: tuple[StageSpec, ...], now: float, more: bool
                ) -> None:
        self._jobs[job] = _Job(job, {}, specs[-1].stage,
                               stranded_since=None if self._executors else now)
        self._add_stages(job, specs, more)

    def _add_stages(self, job_id: JobId, specs: tuple[StageSpec, ...], more: bool) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return
        for spec in specs:
            job.stages[spec.stage] = _Stage(spec, tasks=[_Task(p) for p in range(spec.partitions)])
        job.final = specs[-1].stage
        job.more = more

    def _current(
        self, attempt: TaskAttempt, executor: ExecutorId
    ) -> tuple[_Job, _Stage, _Task] | None:
        """The task a report is about, if the report is from its current attempt."""
        job = self._jobs.get(attempt.task.job)
        stage = job.stages.get(attempt.task.stage) if job else None
        if job is None or stage is None or job.state is not JobState.RUNNING:
            return None
        if attempt.task.stage_attempt != stage.attempt:
            return None
        if not 0 <= attempt.task.partition < len(stage.tasks):
            return None
        task = stage.tasks[attempt.task.partition]
        if (task.state is not TaskState.RUNNING or task.attempt != attempt.attempt
                or task.executor != executor or executor not in self._executors):
            return None
        return job, stage, task

    def _succeeded(self, attempt: TaskAttempt, executor: ExecutorId, actions: list[Action]
                   ) -> None:
        found = self._current(attempt, executor)
        if found is None:
            self.metrics.rejected_reports += 1
            return
        job, stage, task = found
        task.state = TaskState.DONE
        task.done_in = stage.attempt
        self._free(executor)
        final = job.stages[job.final]
        if final.complete() and job.more:
            actions.append(StagesDone(job.id))
        elif final.complete():
            # Tasks still recomputing a lost output of an earlier stage are not needed.
            self._end(job.id, JobState.SUCCEEDED, "", actions, final.outputs())

    def _failed(self, attempt: TaskAttempt, executor: ExecutorId, reason: str, fatal: bool,
                actions: list[Action]) -> None:
        found = self._current(attempt, executor)
        if found is None:
            self.metrics.rejected_reports += 1
            return
        job, _, task = found
        task.failures += 1
        self._requeue(task)
        if fatal:
            self._end(job.id, JobState.FAILED, reason, actions)
            return
        if task.failures >= self.settings.max_task_failures:
            self._end(job.id, JobState.FAILED,
                      f"task {attempt.task} failed {task.failures} times: {reason}", actions)
            return
        self.metrics.task_retries += 1

    def _fetch_failed(self, attempt: TaskAttempt, executor: ExecutorId, lost: ExecutorId,
                      actions: list[Action]) -> None:
        found = self._current(attempt, executor)
        if found is None:
            self.metrics.rejected_reports += 1
            return
        _, _, task = found
        self._requeue(task)  # not the task's fault: no failure counted
        self._lose(lost, actions)

    def _lose(self, executor: ExecutorId, actions: list[Action]) -> None:
        if self._executors.pop(executor, None) is None:
            return
        for job in self._jobs.values():
            if job.state is not JobState.RUNNING:
                continue
            for stage in job.stages.values():
                lost_output = False
                for task in stage.tasks:
                    if task.executor != executor:
                        continue
                    if task.state is TaskState.DONE:
                        lost_output = True
                        self.metrics.recomputed_outputs += 1
                    self._requeue(task)
                if lost_output:
                    # A new stage attempt: reports from the old one are fenced off.
                    for task in stage.tasks:
                        if task.state is TaskState.RUNNING and task.executor is not None:
                            actions.append(CancelTask(
                                TaskAttempt(stage.task_id(job.id, task), task.attempt),
                                task.executor))
                            self._requeue(task)
                    stage.attempt = Attempt(stage.attempt + 1)

    def _tick(self, now: float, actions: list[Action]) -> None:
        timeout = self.settings.heartbeat_timeout_s
        for executor in [e for e, s in self._executors.items() if now - s.last_seen > timeout]:
            self._lose(executor, actions)
        for job in list(self._jobs.values()):
            if self._executors:
                job.stranded_since = None
            elif job.stranded_since is None:
                job.stranded_since = now
            elif now - job.stranded_since > self.settings.no_executor_grace_s:
                self._end(job.id, JobState.FAILED, "no executors are available", actions)

    def _end(self, job_id: JobId, state: JobState, reason: str, actions: list[Action],
             results: tuple[OutputLocation, ...] = ()) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.RUNNING:
            return
        job.state = state
        for stage in job.stages.values():
            for task in stage.tasks:
                if task.state is TaskState.RUNNING and task.executor is not None:
                    actions.append(CancelTask(TaskAttempt(stage.task_id(job.id, task),
                                                          task.attempt), task.executor))
                    self._free(task.executor)
                    task.state = TaskState.PENDING
        actions.append(JobFinished(job.id, state, reason, results))
        self._retire(job)

    # -- helpers ----------------------------------------------------------------------
    def _retire(self, job: _Job) -> None:
        """Forget an ended job but its end state; reports about it are fenced off."""
        del self._jobs[job.id]
        self._ended[job.id] = job.state
        while len(self._ended) > _ENDED_KEPT:
            del self._ended[next(iter(self._ended))]

    def _requeue(self, task: _Task) -> None:
        if task.state is TaskState.RUNNING and task.executor is not None:
            self._free(task.executor)
        task.state = TaskState.PENDING
        task.executor = None
        task.attempt = Attempt(task.attempt + 1)

    def _free(self, executor: ExecutorId) -> None:
        state = self._executors.get(executor)
        if state is not None and state.running > 0:
            state.running -= 1

    def _schedule(self, actions: list[Action]) -> None:
        """Give pending tasks of runnable stages to the executors with the most free slots."""
        for job in self._jobs.values():
            if job.state is not JobState.RUNNING:
                continue
            for stage in job.stages.values():
                if not all(job.stages[i].complete() for i in stage.spec.inputs):
                    continue
                inputs = {i: job.stages[i].outputs() for i in stage.spec.inputs}
                for task in stage.tasks:
                    if task.state is not TaskState.PENDING:
                        continue
                    executor = self._freest()
                    if executor is None:
                        return
                    self._executors[executor].running += 1
                    self._executors[executor].launched += 1
                    task.state = TaskState.RUNNING
                    task.executor = executor
                    attempt = TaskAttempt(stage.task_id(job.id, task), task.attempt)
                    actions.append(LaunchTask(attempt, executor, inputs))

    def _freest(self) -> ExecutorId | None:
        """The executor with the most free slots; among equals, the least used so far."""
        free = [(-(s.slots - s.running), s.launched, e) for e, s in self._executors.items()
                if s.running < s.slots]
        return min(free)[2] if free else None
