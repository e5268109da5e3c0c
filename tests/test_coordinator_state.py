"""The coordinator's state machine driven by events alone: no sockets, no clock."""

from __future__ import annotations

from engine.distributed.ids import Attempt, ExecutorId, JobId, StageId, TaskAttempt, TaskId
from engine.distributed.state import (
    CancelTask,
    Coordinator,
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

JOB = JobId("job-1")
A, B, C = ExecutorId("a"), ExecutorId("b"), ExecutorId("c")
MAP, REDUCE = StageId(1), StageId(2)
TWO_STAGES = (StageSpec(MAP, 4), StageSpec(REDUCE, 2, inputs=(MAP,)))


def launches(actions: list[object]) -> list[LaunchTask]:
    return [a for a in actions if isinstance(a, LaunchTask)]


def finished(actions: list[object]) -> list[JobFinished]:
    return [a for a in actions if isinstance(a, JobFinished)]


def start(coordinator: Coordinator, executors: tuple[ExecutorId, ...] = (A, B),
          slots: int = 2) -> list[LaunchTask]:
    for executor in executors:
        coordinator.handle(ExecutorJoined(executor, slots, now=0.0))
    return launches(coordinator.handle(JobSubmitted(JOB, TWO_STAGES, now=0.0)))


def succeed(coordinator: Coordinator, launched: list[LaunchTask]) -> list[object]:
    actions: list[object] = []
    for launch in launched:
        actions += coordinator.handle(TaskSucceeded(launch.attempt, launch.executor))
    return actions


def test_two_stage_job_spreads_tasks_and_succeeds() -> None:
    coordinator = Coordinator()
    maps = start(coordinator)
    assert len(maps) == 4
    assert {m.executor for m in maps} == {A, B}  # spread over every executor
    assert all(m.attempt.task.stage == MAP for m in maps)
    reduces = launches(succeed(coordinator, maps))
    assert [r.attempt.task.stage for r in reduces] == [REDUCE, REDUCE]
    assert {loc.partition for loc in reduces[0].inputs[MAP]} == {0, 1, 2, 3}
    done = finished(succeed(coordinator, reduces))
    assert done[0].state is JobState.SUCCEEDED
    assert sorted(r.partition for r in done[0].results) == [0, 1]
    assert coordinator.job_state(JOB) is JobState.SUCCEEDED


def test_reduce_waits_for_every_map_task() -> None:
    coordinator = Coordinator()
    maps = start(coordinator)
    assert launches(succeed(coordinator, maps[:3])) == []


def test_failed_task_is_retried_then_the_job_fails() -> None:
    coordinator = Coordinator(Settings(max_task_failures=4))
    launch = start(coordinator)[0]
    for round_ in range(3):
        retry = launches(coordinator.handle(TaskFailed(launch.attempt, launch.executor, "boom")))
        assert len(retry) == 1
        assert retry[0].attempt.attempt == Attempt(round_ + 1)
        launch = retry[0]
    actions = coordinator.handle(TaskFailed(launch.attempt, launch.executor, "boom"))
    (end,) = finished(actions)
    assert end.state is JobState.FAILED and "failed 4 times: boom" in end.reason
    assert all(isinstance(a, CancelTask) for a in actions if not isinstance(a, JobFinished))
    assert coordinator.metrics.task_retries == 3


def test_stale_and_duplicate_reports_are_fenced() -> None:
    coordinator = Coordinator()
    launch = start(coordinator)[0]
    (retry,) = launches(coordinator.handle(TaskFailed(launch.attempt, launch.executor, "x")))
    coordinator.handle(TaskSucceeded(launch.attempt, launch.executor))  # old attempt
    coordinator.handle(TaskSucceeded(retry.attempt, C))  # wrong executor
    coordinator.handle(TaskSucceeded(retry.attempt, retry.executor))
    coordinator.handle(TaskSucceeded(retry.attempt, retry.executor))  # duplicate
    assert coordinator.metrics.rejected_reports == 3


def test_executor_loss_requeues_without_counting_failures() -> None:
    coordinator = Coordinator(Settings(max_task_failures=1))
    maps = start(coordinator, (A, B, C), slots=1)
    on_a = [m for m in maps if m.executor == A]
    actions = coordinator.handle(ExecutorLost(A))
    relaunched = launches(actions)
    assert relaunched == []  # B and C are busy; the lost task waits
    done_b = [m for m in maps if m.executor != A]
    relaunched = launches(succeed(coordinator, done_b))
    assert [r.attempt.task.partition for r in relaunched][:1] == [on_a[0].attempt.task.partition]
    assert relaunched[0].attempt.attempt == Attempt(1)
    assert coordinator.job_state(JOB) is JobState.RUNNING  # loss did not count as failure


def test_lost_map_outputs_are_recomputed_before_reduce_runs() -> None:
    coordinator = Coordinator()
    maps = start(coordinator)
    reduces = launches(succeed(coordinator, maps))
    assert len(reduces) == 2
    lost_partitions = {m.attempt.task.partition for m in maps if m.executor == A}
    pending = launches(coordinator.handle(ExecutorLost(A)))
    recomputed: set[int] = set()
    rerun: list[LaunchTask] = []
    while pending:  # B runs the lost map partitions, then the reduce that was on A
        assert all(p.executor == B for p in pending)
        for launch in pending:
            if launch.attempt.task.stage == MAP:
                assert launch.attempt.task.stage_attempt == Attempt(1)
                recomputed.add(launch.attempt.task.partition)
            else:
                rerun.append(launch)
        pending = launches(succeed(coordinator, [p for p in pending
                                                 if p.attempt.task.stage == MAP]))
    assert recomputed == lost_partitions
    assert coordinator.metrics.recomputed_outputs == len(lost_partitions)
    late = [r for r in reduces if r.executor == A]
    coordinator.handle(TaskSucceeded(late[0].attempt, A))  # from the lost executor: fenced
    assert coordinator.metrics.rejected_reports == 1
    assert [r.attempt.task.stage for r in rerun] == [REDUCE]
    assert {loc.executor for loc in rerun[0].inputs[MAP]} == {B}
    assert {loc.partition for loc in rerun[0].inputs[MAP]} == {0, 1, 2, 3}


def test_recomputes_no_longer_needed_are_cancelled_when_the_job_succeeds() -> None:
    """Reduces that read a map output before its executor died may still finish the job;
    the tasks recomputing that output are then cancelled and their slots freed."""
    coordinator = Coordinator()
    maps = start(coordinator, (A, B, C))
    reduces = launches(succeed(coordinator, maps))
    assert A in {m.executor for m in maps} and A not in {r.executor for r in reduces}
    recomputes = launches(coordinator.handle(ExecutorLost(A)))
    assert recomputes and all(r.attempt.task.stage == MAP for r in recomputes)
    actions = succeed(coordinator, reduces)
    assert finished(actions)[0].state is JobState.SUCCEEDED
    cancelled = [a.attempt for a in actions if isinstance(a, CancelTask)]
    assert sorted(cancelled, key=repr) == sorted((r.attempt for r in recomputes), key=repr)
    coordinator.validate_state()  # no slot still counted for a cancelled task
    next_job = coordinator.handle(JobSubmitted(JobId("job-2"), (StageSpec(MAP, 4),), now=0.0))
    assert len(launches(next_job)) == 4  # B and C have both their slots free again


def test_fetch_failure_marks_the_source_executor_lost() -> None:
    coordinator = Coordinator()
    maps = start(coordinator)
    reduces = launches(succeed(coordinator, maps))
    reader = next(r for r in reduces if r.executor == B)
    actions = coordinator.handle(FetchFailed(reader.attempt, B, lost=A))
    remap = launches(actions)
    assert remap and all(r.attempt.task.stage == MAP for r in remap)
    assert coordinator.job_state(JOB) is JobState.RUNNING


def test_heartbeat_timeout_then_no_executor_grace_fails_the_job() -> None:
    coordinator = Coordinator(Settings(heartbeat_timeout_s=2.0, no_executor_grace_s=5.0))
    start(coordinator)
    coordinator.handle(Heartbeat(A, now=1.5))
    coordinator.handle(Heartbeat(B, now=1.5))
    assert finished(coordinator.handle(Tick(now=3.0))) == []
    assert finished(coordinator.handle(Tick(now=4.0))) == []  # both timed out now
    assert finished(coordinator.handle(Tick(now=8.0))) == []  # still within grace
    (end,) = finished(coordinator.handle(Tick(now=9.5)))
    assert end.state is JobState.FAILED and end.reason == "no executors are available"


def test_a_job_submitted_later_gets_its_own_grace_period() -> None:
    """Found by chaos: a job submitted just after another one failed for want of
    executors inherited that job's timer and failed at once."""
    coordinator = Coordinator(Settings(no_executor_grace_s=5.0))
    first, second = JobId("first"), JobId("second")
    coordinator.handle(JobSubmitted(first, TWO_STAGES, now=0.0))
    coordinator.handle(Tick(now=1.0))
    (end,) = finished(coordinator.handle(Tick(now=6.5)))
    assert end.job == first
    coordinator.handle(JobSubmitted(second, TWO_STAGES, now=6.6))
    assert finished(coordinator.handle(Tick(now=7.0))) == []
    assert finished(coordinator.handle(Tick(now=11.0))) == []  # 4.4 s of its 5
    maps = launches(coordinator.handle(ExecutorJoined(A, 4, now=11.2)))
    assert {m.attempt.task.job for m in maps} == {second}


def test_new_executor_mid_job_is_used() -> None:
    coordinator = Coordinator()
    start(coordinator, (A,), slots=1)
    coordinator.handle(ExecutorLost(A))
    relaunched = launches(coordinator.handle(ExecutorJoined(C, 2, now=1.0)))
    assert {r.executor for r in relaunched} == {C} and len(relaunched) == 2


def test_cancel_stops_running_tasks() -> None:
    coordinator = Coordinator()
    maps = start(coordinator)
    actions = coordinator.handle(JobCancelled(JOB))
    assert {a.attempt for a in actions if isinstance(a, CancelTask)} == {m.attempt for m in maps}
    assert finished(actions)[0].state is JobState.CANCELLED
    assert launches(coordinator.handle(Tick(now=1.0))) == []


def test_reports_for_unknown_jobs_are_fenced() -> None:
    coordinator = Coordinator()
    start(coordinator)
    unknown = TaskAttempt(TaskId(JobId("nope"), MAP, Attempt(0), 0), Attempt(0))
    coordinator.handle(TaskSucceeded(unknown, A))
    assert coordinator.metrics.rejected_reports == 1


def test_fatal_failure_ends_the_job_without_retries() -> None:
    coordinator = Coordinator()
    launch = start(coordinator)[0]
    actions = coordinator.handle(TaskFailed(launch.attempt, launch.executor, "bad SQL",
                                            fatal=True))
    (end,) = finished(actions)
    assert end.state is JobState.FAILED and end.reason == "bad SQL"
    assert coordinator.metrics.task_retries == 0


def test_a_job_with_more_stages_to_come_waits_for_them() -> None:
    """Adaptive planning: the probe stage's end is reported, the job stays open, and the
    stages planned after it run over its kept outputs (recomputed if lost meanwhile)."""
    coordinator = Coordinator()
    for executor in (A, B):
        coordinator.handle(ExecutorJoined(executor, 2, now=0.0))
    probes = launches(coordinator.handle(
        JobSubmitted(JOB, (StageSpec(MAP, 2),), now=0.0, more=True)))
    actions = succeed(coordinator, probes)
    assert [a for a in actions if isinstance(a, StagesDone)] == [StagesDone(JOB)]
    assert finished(actions) == [] and coordinator.job_state(JOB) is JobState.RUNNING
    lost = coordinator.handle(ExecutorLost(A))  # holds one probe output
    again = launches(lost)
    assert [r.attempt.task.stage for r in again] == [MAP]
    # The new stage waits for the recomputed output, then the job ends with it.
    assert launches(coordinator.handle(StagesAdded(JOB, (StageSpec(REDUCE, 1, (MAP,)),)))) == []
    reduces = launches(succeed(coordinator, again))
    assert [r.attempt.task.stage for r in reduces] == [REDUCE]
    assert {loc.partition for loc in reduces[0].inputs[MAP]} == {0, 1}
    done = finished(succeed(coordinator, reduces))
    assert done[0].state is JobState.SUCCEEDED
    assert [r.partition for r in done[0].results] == [0]
