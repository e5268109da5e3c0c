"""Deterministic fault injection for chaos tests: fail, delay or kill an executor at a
chosen point of a chosen task.

Faults are written `ACTION@POINT[:stage=S,partition=P,attempt=A,seconds=X,once=FILE]`,
e.g. `kill@after_write:stage=1,partition=0,attempt=0`. With `once`, only the first
process to reach the point acts, the one that creates FILE (a test removes it to arm the
fault again), so a fault given to every executor fires exactly once. They are accepted only when the
process runs with KRISHIV_ENABLE_FAULT_INJECTION=1 (see flight_server.config), so a
production configuration cannot carry them.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from dataclasses import dataclass

from engine.distributed.ids import TaskAttempt


class FaultAction(enum.Enum):
    FAIL = "fail"  # the task fails (a retryable error)
    DELAY = "delay"  # the task sleeps `seconds` first
    KILL = "kill"  # the executor process dies (SIGKILL)


class FaultPoint(enum.Enum):
    TASK_START = "task_start"  # before the task reads anything (map time)
    MID_SHUFFLE = "mid_shuffle"  # after the first output batch is written
    AFTER_WRITE = "after_write"  # output files written, completion not yet reported
    SERVING = "serving"  # while sending one of the task's output partitions to a reader


class InjectedFault(Exception):
    """A task failure made on purpose by a test."""


class BadFault(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    action: FaultAction
    point: FaultPoint
    stage: int | None = None
    partition: int | None = None
    attempt: int | None = None
    seconds: float = 0.0
    once: str | None = None  # a marker file: only its creator acts

    @classmethod
    def parse(cls, text: str) -> Fault:
        head, _, tail = text.strip().partition(":")
        action, _, point = head.partition("@")
        try:
            fields = dict(part.split("=", 1) for part in tail.split(",") if part)
            fault = cls(FaultAction(action), FaultPoint(point),
                        _int(fields.pop("stage", None)), _int(fields.pop("partition", None)),
                        _int(fields.pop("attempt", None)), float(fields.pop("seconds", 0.0)),
                        fields.pop("once", None))
        except ValueError as exc:
            raise BadFault(f"bad fault {text!r}: {exc}") from None
        if fields:
            raise BadFault(f"bad fault {text!r}: unknown fields {sorted(fields)}")
        return fault

    def matches(self, point: FaultPoint, stage: int, partition: int, attempt: int) -> bool:
        return (point is self.point
                and self.stage in (None, stage)
                and self.partition in (None, partition)
                and self.attempt in (None, attempt))


def _claim(marker: str) -> bool:
    """True for the one process that creates `marker`."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


class Faults:
    """The faults one executor process carries out."""

    def __init__(self, faults: tuple[Fault, ...] = ()) -> None:
        self._faults = faults

    def __bool__(self) -> bool:
        return bool(self._faults)

    def at(self, point: FaultPoint, attempt: TaskAttempt) -> None:
        """Carry out the faults set for `point` of this task."""
        task = attempt.task
        for fault in self._faults:
            if not fault.matches(point, task.stage, task.partition, attempt.attempt):
                continue
            if fault.once is not None and not _claim(fault.once):
                continue
            if fault.action is FaultAction.DELAY:
                time.sleep(fault.seconds)
            elif fault.action is FaultAction.FAIL:
                raise InjectedFault(f"injected failure at {point.value} of {task}")
            else:
                os.kill(os.getpid(), signal.SIGKILL)
