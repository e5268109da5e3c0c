"""Engine settings, filled from the server's one typed config."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def default_running_queries() -> int:
    """Queries a server runs at once unless told: twice the cores, at least 4. Each query
    already uses every core; measured on 2 cores (bench/RESULTS.md), 16 at once gave 25%
    less throughput than 4, while 4 kept 85% of the peak with 64 clients."""
    return max(4, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class EngineConfig:
    catalog_name: str = "krishiv"
    default_schema: str = "public"
    target_partitions: int = field(default_factory=lambda: os.cpu_count() or 1)
    batch_size: int = 32768
    memory_limit_bytes: int | None = None
    query_timeout_s: float | None = None
    max_running_queries: int = 16
    max_queued_queries: int = 64
    # Flight clients default to a 16 MiB message cap: keep every batch well under it.
    max_batch_bytes: int = 4 * 1024 * 1024
    # Memory for results of plain table reads (engine.read_cache); 0 keeps none.
    read_cache_bytes: int = 512 * 1024 * 1024
