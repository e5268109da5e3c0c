"""Start and stop real `krishiv serve` processes on 127.0.0.1 for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KRISHIV = str(Path(sys.executable).parent / "krishiv")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    port: int
    log_path: Path
    token: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_server(
    warehouse: Path,
    log_dir: Path,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    token: str | None = None,
    ready_timeout_s: float = 180.0,
) -> RunningServer:
    """A `krishiv serve` process; `token`, when given, is the one bearer token it accepts
    (unless `env` sets the token variables itself)."""
    if token is not None and not any(k.startswith("KRISHIV_COORDINATOR_BEARER") for k in env or {}):
        env = {**(env or {}), "KRISHIV_COORDINATOR_BEARER_TOKEN": token}
    return start_krishiv(["serve", "--warehouse", str(warehouse), *(args or [])], log_dir,
                         env, token, "serving Flight SQL", ready_timeout_s)


def start_executor(work_dir: Path, log_dir: Path, token: str | None,
                   args: list[str] | None = None) -> RunningServer:
    """A `krishiv executor` process serving shuffle files from `work_dir`."""
    env = {"KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": token} if token else {}
    return start_krishiv(["executor", "--work-dir", str(work_dir), *(args or [])], log_dir,
                         env, token, "executor serving shuffle data", 60.0)


def environment_without_krishiv() -> dict[str, str]:
    """This process's environment minus every KRISHIV_ setting: a started process is
    configured only by what its test passes."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KRISHIV_")}


def start_krishiv(command: list[str], log_dir: Path, env: dict[str, str] | None,
                  token: str | None, ready_text: str, ready_timeout_s: float) -> RunningServer:
    port = free_port()
    log_path = log_dir / f"{command[0]}-{port}.log"
    full_env = {**environment_without_krishiv(), **(env or {})}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [KRISHIV, *command, "--port", str(port)], stdout=log_file,
            stderr=subprocess.STDOUT, env=full_env, text=True,
        )
    server = RunningServer(process, port, log_path, token)
    wait_until_ready(server, ready_text, ready_timeout_s)
    return server


@contextmanager
def running_server(warehouse: Path, log_dir: Path, args: list[str] | None = None,
                   token: str | None = None, env: dict[str, str] | None = None
                   ) -> Iterator[RunningServer]:
    """start_server for a `with` block, always stopped at its end."""
    server = start_server(warehouse, log_dir, args=args, token=token, env=env)
    try:
        yield server
    finally:
        server.stop()


def wait_until_ready(server: RunningServer, ready_text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        # Printed after the listening socket is bound.
        if ready_text in server.log():
            return
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout_s} s:\n{server.log()}")
