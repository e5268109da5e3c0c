"""Property test of the coordinator's state machine: random executors joining and dying,
task successes and failures, fetch failures, late and duplicate reports, cancels and clock
ticks. After every event the bookkeeping is consistent; once the chaos stops and one
healthy executor is left, every job ends."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.distributed.ids import ExecutorId, JobId, StageId
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
    StageSpec,
    TaskFailed,
    TaskSucceeded,
    Tick,
)

EXECUTORS = [ExecutorId(f"e{i}") for i in range(4)]
HEARTBEAT_TIMEOUT = 5.0
GRACE = 20.0


class CoordinatorChaos(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.machine = Coordinator(Settings(max_task_failures=4,
                                            heartbeat_timeout_s=HEARTBEAT_TIMEOUT,
                                            no_executor_grace_s=GRACE))
        self.now = 0.0
        self.alive: set[ExecutorId] = set()
        self.launched: list[LaunchTask] = []  # every launch ever: old ones make late reports
        self.running: dict[object, LaunchTask] = {}  # task attempt -> its launch
        self.jobs: dict[JobId, JobState | None] = {}
        self.submitted = 0

    def _handle(self, event: Event) -> list[Action]:
        actions = self.machine.handle(event)
        self.machine.validate_state()
        for action in actions:
            if isinstance(action, LaunchTask):
                assert action.executor in self.alive, "launched on a dead executor"
                for stage_inputs in action.inputs.values():
                    assert all(o.executor in self.alive for o in stage_inputs), (
                        "inputs on a lost executor")
                self.launched.append(action)
                self.running[action.attempt] = action
            elif isinstance(action, CancelTask):
                # The machine moved the task on (a new stage attempt): its report is stale.
                self.running.pop(action.attempt, None)
            elif isinstance(action, JobFinished):
                assert self.jobs[action.job] is None, "a job finished twice"
                self.jobs[action.job] = action.state
                for attempt in [a for a in self.running if a.task.job == action.job]:
                    del self.running[attempt]
        return actions

    @rule(which=st.sampled_from(EXECUTORS), slots=st.integers(1, 3))
    def join(self, which: ExecutorId, slots: int) -> None:
        if which not in self.alive:
            self.alive.add(which)
            self._handle(ExecutorJoined(which, slots, self.now))

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        which = data.draw(st.sampled_from(sorted(self.alive)))
        self.alive.discard(which)
        self._forget_running_on(which)
        self._handle(ExecutorLost(which))

    @rule(stages=st.lists(st.integers(1, 3), min_size=1, max_size=3))
    def submit(self, stages: list[int]) -> None:
        self.submitted += 1
        job = JobId(f"job-{self.submitted}")
        specs = tuple(StageSpec(StageId(i + 1), tasks, (StageId(i),) if i else ())
                      for i, tasks in enumerate(stages))
        self.jobs[job] = None
        self._handle(JobSubmitted(job, specs, self.now))

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def succeed(self, data: st.DataObject) -> None:
        launch = self._pick(data)
        self._handle(TaskSucceeded(launch.attempt, launch.executor))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), fatal=st.booleans())
    def fail(self, data: st.DataObject, fatal: bool) -> None:
        launch = self._pick(data)
        self._handle(TaskFailed(launch.attempt, launch.executor, "boom", fatal=fatal))

    @precondition(lambda self: self.running and self.alive)
    @rule(data=st.data())
    def fetch_failure(self, data: st.DataObject) -> None:
        launch = self._pick(data)
        lost = data.draw(st.sampled_from(sorted(self.alive)))
        self.alive.discard(lost)
        self._forget_running_on(lost)
        self._handle(FetchFailed(launch.attempt, launch.executor, lost))
        self._sync_alive()

    @precondition(lambda self: self.launched)
    @rule(data=st.data(), success=st.booleans())
    def late_or_duplicate_report(self, data: st.DataObject, success: bool) -> None:
        """A report from any attempt ever launched: stale ones must change nothing."""
        launch = data.draw(st.sampled_from(self.launched))
        before = self.machine.metrics.rejected_reports
        current = launch.attempt in self.running
        event: Event = (TaskSucceeded(launch.attempt, launch.executor) if success else
                        TaskFailed(launch.attempt, launch.executor, "late"))
        self.running.pop(launch.attempt, None)
        self._handle(event)
        if not current:
            assert self.machine.metrics.rejected_reports == before + 1

    @precondition(lambda self: self.running and len(self.alive) > 1)
    @rule(data=st.data())
    def report_from_another_executor(self, data: st.DataObject) -> None:
        attempt = data.draw(st.sampled_from(sorted(self.running, key=repr)))
        launch = self.running[attempt]
        other = data.draw(st.sampled_from(sorted(self.alive - {launch.executor})))
        before = self.machine.metrics.rejected_reports
        self._handle(TaskSucceeded(attempt, other))
        assert self.machine.metrics.rejected_reports == before + 1

    @precondition(lambda self: any(s is None for s in self.jobs.values()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(j for j, s in self.jobs.items() if s is None)))
        self._handle(JobCancelled(job))

    @rule(seconds=st.floats(0.1, 8.0))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        for executor in self.alive:
            self._handle(Heartbeat(executor, self.now))
        self._handle(Tick(self.now))
        self._sync_alive()

    @invariant()
    def ended_jobs_stay_ended(self) -> None:
        for job, state in self.jobs.items():
            if state is not None:
                assert self.machine.job_state(job) is state

    def teardown(self) -> None:
        """Chaos over: one executor that never fails; every job must end."""
        if not hasattr(self, "machine"):
            return
        survivor = ExecutorId("survivor")
        self.alive.add(survivor)
        self._handle(ExecutorJoined(survivor, 2, self.now))
        for _ in range(500):
            if all(state is not None for state in self.jobs.values()):
                return
            self.now += 1.0
            for executor in list(self.alive):
                self._handle(Heartbeat(executor, self.now))
            self._handle(Tick(self.now))
            for launch in list(self.running.values()):
                if launch.attempt in self.running:
                    del self.running[launch.attempt]
                    self._handle(TaskSucceeded(launch.attempt, launch.executor))
        raise AssertionError(f"jobs never ended: {self.jobs}")

    # -- helpers --------------------------------------------------------------------------
    def _pick(self, data: st.DataObject) -> LaunchTask:
        attempt = data.draw(st.sampled_from(sorted(self.running, key=repr)))
        return self.running.pop(attempt)

    def _forget_running_on(self, executor: ExecutorId) -> None:
        for attempt in [a for a, launch in self.running.items() if launch.executor == executor]:
            del self.running[attempt]

    def _sync_alive(self) -> None:
        """Executors the coordinator dropped (heartbeat timeout) are dead to us too."""
        known = self.machine.executors()
        for executor in self.alive - known:
            self.alive.discard(executor)
            self._forget_running_on(executor)


CoordinatorChaos.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                              deadline=None)
test_coordinator_survives_chaos = CoordinatorChaos.TestCase
