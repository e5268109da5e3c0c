"""The `krishiv` command: settings that must come before Arrow and DataFusion load, then
the command line (flight_server.cli)."""

from __future__ import annotations

import os

# mimalloc, the allocator of both pyarrow and DataFusion, hands pages that fall idle back
# to the OS after 10 ms by default; a server that takes in or sends a gigabyte then faults
# every page in again at its next request (about 4 µs a page on these machines). Ten
# seconds keeps them for the next request: an ADBC ingest of TPC-H lineitem SF 1 went from
# 4.9 to 3.8 s. Each library reads it once, when it loads. Child processes (query workers,
# local executors) inherit it.
PURGE_DELAY_MS = "10000"


def keep_freed_memory() -> None:
    """Set the purge delay for this process and its children, unless already set."""
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS)


def main() -> None:
    keep_freed_memory()
    from flight_server.cli import main as cli_main

    cli_main()
