"""The distributed runtime: typed ids, the coordinator's job state machine (no I/O)."""
