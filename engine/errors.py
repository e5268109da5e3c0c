"""Typed engine errors. Messages are one line and meant for the client."""


class EngineError(Exception):
    """Base of every error the engine raises for a client's request."""


class InvalidQuery(EngineError):
    """The SQL cannot be parsed or planned, or a parameter does not fit."""


class ObjectNotFound(EngineError):
    """A table, schema or catalog the query names does not exist."""


class NotAllowed(EngineError):
    """The statement is refused by the server's sandbox."""


class NotSupported(EngineError):
    """A valid request this server does not implement (yet)."""


class ResourceExhausted(EngineError):
    """The query went over its memory limit."""


class DataUnavailable(EngineError):
    """A table's stored data cannot be read: a data file of its current version is gone."""


class QueryTimeout(EngineError):
    """The query ran longer than the server's query timeout."""


class QueryCancelled(EngineError):
    """The client cancelled the query."""


class ServerBusy(EngineError):
    """All query slots and the waiting queue are full."""


class WorkerLost(EngineError):
    """The process running the query ended unexpectedly (killed, out of memory)."""
