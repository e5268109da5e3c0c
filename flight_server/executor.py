"""An executor's Flight service: serves the shuffle files its map tasks wrote (do_get).

Every call must carry the executor task token (KRISHIV_EXECUTOR_TASK_BEARER_TOKEN).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from engine.distributed.shuffle import BadShuffleKey, ShuffleKey, read_partition
from flight_server.auth import EXECUTOR_IDENTITY
from flight_server.cluster import CANCEL_TASK, DROP_JOB, RUN_TASK, ExecutorAgent
from flight_server.errors import InvalidArgument, NotFound, PermissionDenied, Unimplemented
from flight_server.generated import Flight_pb2 as fpb
from flight_server.ipc import PutStream
from flight_server.transport import Call


class ShuffleHandler:
    def __init__(self, work_dir: Path) -> None:
        self._work_dir = work_dir
        self.agent: ExecutorAgent | None = None

    def do_get(self, call: Call, ticket: bytes) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        try:
            key = ShuffleKey.from_ticket(ticket)
        except BadShuffleKey as exc:
            raise InvalidArgument(f"bad shuffle ticket: {exc}") from None
        try:
            return read_partition(self._work_dir, key)
        except FileNotFoundError:
            raise NotFound(f"no shuffle output for {key.job} stage {key.stage}."
                           f"{key.stage_attempt} partition {key.partition} map task "
                           f"{key.map_task}.{key.attempt}") from None

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        raise Unimplemented("an executor serves shuffle data by DoGet only")

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema:
        raise Unimplemented("an executor serves shuffle data by DoGet only")

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]:
        raise Unimplemented("an executor serves shuffle data by DoGet only")

    def do_action(self, call: Call, kind: str, body: bytes) -> Iterator[bytes]:
        if kind in (RUN_TASK, CANCEL_TASK, DROP_JOB) and self.agent is not None:
            if call.identity not in (EXECUTOR_IDENTITY, "anonymous"):
                raise PermissionDenied("only the coordinator may run tasks here")
            if kind == RUN_TASK:
                self.agent.run_task(body)
            elif kind == CANCEL_TASK:
                self.agent.cancel_task(body)
            else:
                self.agent.drop_job(body)
            return iter([b"{}"])
        raise Unimplemented(f"unknown action type: {kind[:100]}")

    def list_actions(self) -> list[tuple[str, str]]:
        return []
