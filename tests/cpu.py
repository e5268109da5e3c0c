"""CPU time of a server and the processes it started, read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it, as they are now."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # it ended
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(pids: list[int], seconds: float) -> float:
    """CPU seconds the processes `pids` used over the next `seconds` (ended ones: none)."""
    before = {pid: _cpu_seconds(pid) for pid in pids}
    time.sleep(seconds)
    used = 0.0
    for pid, start in before.items():
        end = _cpu_seconds(pid)
        if start is not None and end is not None:
            used += end - start
    return used


def wait_busy(pid: int, timeout_s: float = 15.0) -> list[int]:
    """Wait until the server's process tree computes for 1.5 s in a row (longer than
    query workers take to start); the processes then alive."""
    deadline = time.monotonic() + timeout_s
    busy_samples = 0
    while time.monotonic() < deadline:
        pids = process_tree(pid)
        busy_samples = busy_samples + 1 if cpu_used(pids, 0.3) > 0.2 else 0
        if busy_samples == 5:
            return pids
    raise AssertionError("query never started")


def assert_cpu_freed(pids: list[int]) -> None:
    """Within a second, the processes that ran the query compute (almost) nothing."""
    time.sleep(1.0)
    used = cpu_used(pids, 1.0)
    assert used < 0.15, f"query still computing after its end: {used:.2f} CPU s in 1 s"
