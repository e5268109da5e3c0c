"""Krishiv as the benchmarks run it: real `krishiv` processes, stopped when done."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.demo import DEMO_NAMESPACE
from tests.servers import free_port


@dataclass(frozen=True)
class KrishivMode:
    """How to run Krishiv: embedded (no executors), `serve --executors N`, or separate
    `krishiv coordinator` and `krishiv executor` processes."""

    executors: int = 0
    separate: bool = False
    shuffle_partitions: int | None = None  # None: the server's default
    extra_args: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if not self.executors:
            return "`krishiv serve` (embedded: queries run in its worker processes)"
        how = "started one by one" if self.separate else "of `serve --executors`"
        partitions = self.shuffle_partitions or "the default number of"
        return f"coordinator + {self.executors} executors {how}, {partitions} shuffle partitions"


@contextmanager
def running_krishiv(mode: KrishivMode, warehouse: Path, scale: float,
                    log_name: str = "bench-server.log") -> Iterator[int]:
    """Start Krishiv over `warehouse` (TPC-H demo at `scale`), yield its port, stop it."""
    port = free_port()
    warehouse.mkdir(parents=True, exist_ok=True)
    processes = _start(mode, warehouse, scale, port, warehouse / log_name)
    try:
        yield port
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def krishiv_command() -> str:
    return str(Path(sys.executable).parent / "krishiv")


def _start(mode: KrishivMode, warehouse: Path, scale: float, port: int, log_path: Path
           ) -> list[subprocess.Popen[bytes]]:
    krishiv = krishiv_command()
    common = ["--port", str(port), "--warehouse", str(warehouse), "--default-schema",
              DEMO_NAMESPACE, "--demo", "--demo-scale", f"{scale:g}", *mode.extra_args]
    cluster = (["--shuffle-partitions", str(mode.shuffle_partitions)]
               if mode.shuffle_partitions else [])
    env = {**os.environ, "KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": secrets.token_urlsafe(16)}
    if not mode.executors:
        commands = [[krishiv, "serve", *common]]
    elif not mode.separate:
        commands = [[krishiv, "serve", *common, *cluster, "--executors", str(mode.executors)]]
    else:
        commands = [[krishiv, "coordinator", *common, *cluster]] + [
            [krishiv, "executor", "--coordinator", f"grpc://127.0.0.1:{port}", "--port", "0",
             "--warehouse", str(warehouse), "--work-dir", str(warehouse / f"executor-{i}")]
            for i in range(mode.executors)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with open(log_path, "w") as log:
            for number, command in enumerate(commands):
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                  env=env))
                if number == 0:
                    _wait_for_line(log_path, "serving Flight SQL", processes[0])
        if mode.executors:
            _wait_for_line(log_path, "joined at", processes[0], mode.executors)
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        raise
    return processes


def _wait_for_line(path: Path, text: str, server: subprocess.Popen[bytes],
                   count: int = 1) -> None:
    deadline = time.monotonic() + 900
    while path.read_text().count(text) < count:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"Krishiv did not start; see {path}")
        time.sleep(0.2)
