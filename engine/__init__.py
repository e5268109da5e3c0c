"""Session, SQL engine and (later) the distributed runtime."""

from engine.config import EngineConfig
from engine.session import PlannedQuery, Session, SqlEngine

__all__ = ["EngineConfig", "PlannedQuery", "Session", "SqlEngine"]
