"""Typed identities of jobs, stages, tasks and executors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

JobId = NewType("JobId", str)
ExecutorId = NewType("ExecutorId", str)
StageId = NewType("StageId", int)
Attempt = NewType("Attempt", int)


@dataclass(frozen=True, order=True)
class TaskId:
    """One partition of one attempt of a stage; a task's own retries are `Attempt`s."""

    job: JobId
    stage: StageId
    stage_attempt: Attempt
    partition: int

    def __str__(self) -> str:
        return f"{self.job}/{self.stage}.{self.stage_attempt}/{self.partition}"


@dataclass(frozen=True)
class TaskAttempt:
    task: TaskId
    attempt: Attempt
