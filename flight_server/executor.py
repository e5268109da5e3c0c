"""An executor's Flight service: serves the shuffle files its map tasks wrote (do_get).

Every call must carry the executor task token (KRISHIV_EXECUTOR_TASK_BEARER_TOKEN).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.distributed.faults import FaultPoint, Faults
from engine.distributed.ids import TaskAttempt, TaskId
from engine.distributed.shuffle import (
    RESULT_TICKET_PREFIX,
    BadShuffleKey,
    ShuffleKey,
    open_result_ticket,
    read_partition,
)
from flight_server.auth import EXECUTOR_IDENTITY
from flight_server.cluster import CANCEL_TASK, DROP_JOB, RUN_TASK, ExecutorAgent
from flight_server.errors import InvalidArgument, NotFound, Unauthenticated, Unimplemented
from flight_server.generated import Flight_pb2 as fpb
from flight_server.ipc import PutStream
from flight_server.transport import Authenticate, Call

UNAUTHENTICATED = "unauthenticated"


def lenient(authenticate: Authenticate) -> Authenticate:
    """Let calls without the executor token through as UNAUTHENTICATED: clients of
    `--direct-results` fetch result partitions with signed tickets, not the token."""

    def check(headers: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
        try:
            return authenticate(headers)
        except Unauthenticated:
            return UNAUTHENTICATED, []

    return check


class ShuffleHandler:
    def __init__(self, work_dir: Path, secret: str | None, faults: Faults | None = None
                 ) -> None:
        self._work_dir = work_dir
        self._secret = secret
        self._faults = faults or Faults()
        self.agent: ExecutorAgent | None = None

    def do_get(self, call: Call, ticket: bytes) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        if ticket.startswith(RESULT_TICKET_PREFIX) and self._secret:
            try:
                key = open_result_ticket(ticket, self._secret, time.time())
            except BadShuffleKey as exc:
                raise Unauthenticated(f"result ticket refused: {exc}") from None
            return self._read(key)
        if call.identity == UNAUTHENTICATED:
            raise Unauthenticated("shuffle data needs the executor token")
        try:
            key = ShuffleKey.from_ticket(ticket)
        except BadShuffleKey as exc:
            raise InvalidArgument(f"bad shuffle ticket: {exc}") from None
        return self._read(key)

    def _read(self, key: ShuffleKey) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        try:
            schema, batches = read_partition(self._work_dir, key)
        except FileNotFoundError:
            raise NotFound(f"no shuffle output for {key.job} stage {key.stage}."
                           f"{key.stage_attempt} partition {key.partition} map task "
                           f"{key.map_task}.{key.attempt}") from None
        if not self._faults:
            return schema, batches
        producer = TaskAttempt(TaskId(key.job, key.stage, key.stage_attempt, key.map_task),
                               key.attempt)
        return schema, self._serving(producer, batches)

    def _serving(self, producer: TaskAttempt, batches: Iterator[pa.RecordBatch]
                 ) -> Iterator[pa.RecordBatch]:
        """`batches`, passing the serving fault point after the first one is sent."""
        for number, batch in enumerate(batches):
            yield batch
            if number == 0:
                self._faults.at(FaultPoint.SERVING, producer)

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        raise Unimplemented("an executor serves shuffle data by DoGet only")

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema:
        raise Unimplemented("an executor serves shuffle data by DoGet only")

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]:
        raise Unimplemented("an executor serves shuffle data by DoGet only")

    def do_action(self, call: Call, kind: str, body: bytes) -> list[bytes]:
        if kind in (RUN_TASK, CANCEL_TASK, DROP_JOB) and self.agent is not None:
            if call.identity not in (EXECUTOR_IDENTITY, "anonymous"):
                raise Unauthenticated("only the coordinator may run tasks here")
            if kind == RUN_TASK:
                self.agent.run_task(body)
            elif kind == CANCEL_TASK:
                self.agent.cancel_task(body)
            else:
                self.agent.drop_job(body)
            return [b"{}"]
        raise Unimplemented(f"unknown action type: {kind[:100]}")

    def answers_at_once(self, method: str, request: Any) -> bool:
        return False  # shuffle reads and task actions touch files

    def list_actions(self) -> list[tuple[str, str]]:
        return []
