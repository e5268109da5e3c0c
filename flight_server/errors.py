"""Every error a client can see, mapped to a Flight status in this one place.

pyarrow's Flight server turns any Python exception other than its own Flight errors
into a status whose detail is the formatted Python traceback. Client-facing errors
here carry their status code as a base class, and their detail is reduced to the
status name, so a client reads one line and never a traceback.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from catalog import AlreadyExists, CatalogUnavailable, NamespaceNotFound, TableNotFound
from engine import errors as engine_errors

log = logging.getLogger("krishiv.server")


class ClientFacing(Exception):
    status_name = "UNKNOWN"


class InvalidArgument(pa.ArrowInvalid, ClientFacing):
    status_name = "INVALID_ARGUMENT"


class NotFound(pa.ArrowKeyError, ClientFacing):
    status_name = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ResourceExhausted(pa.ArrowMemoryError, ClientFacing):
    status_name = "RESOURCE_EXHAUSTED"


class Unimplemented(pa.ArrowNotImplementedError, ClientFacing):
    status_name = "UNIMPLEMENTED"


class AlreadyExistsError(pa.ArrowInvalid, ClientFacing):
    status_name = "INVALID_ARGUMENT"


def _install_short_details() -> None:
    original = traceback.format_exception

    @functools.wraps(original)
    def format_exception(exc: Any, /, *args: Any, **kwargs: Any) -> list[str]:
        value = args[0] if args else exc
        if isinstance(value, ClientFacing):
            return [value.status_name]
        return original(exc, *args, **kwargs)

    traceback.format_exception = format_exception


_install_short_details()

_FLIGHT_ERRORS = (flight.FlightError, ClientFacing)


def to_client_error(exc: BaseException) -> BaseException:
    """The typed error a client should receive for `exc`."""
    if isinstance(exc, _FLIGHT_ERRORS):
        return exc
    message = str(exc)
    mapping: list[tuple[type[BaseException] | tuple[type[BaseException], ...],
                       Callable[[str], BaseException]]] = [
        ((engine_errors.InvalidQuery,), InvalidArgument),
        ((engine_errors.ObjectNotFound, TableNotFound, NamespaceNotFound), NotFound),
        ((AlreadyExists,), AlreadyExistsError),
        ((engine_errors.NotAllowed,), flight.FlightUnauthorizedError),
        ((engine_errors.NotSupported,), Unimplemented),
        ((engine_errors.ResourceExhausted,), ResourceExhausted),
        ((engine_errors.QueryTimeout,), flight.FlightTimedOutError),
        ((engine_errors.QueryCancelled,), flight.FlightCancelledError),
        ((CatalogUnavailable,), flight.FlightUnavailableError),
    ]
    for types, make in mapping:
        if isinstance(exc, types):
            return make(message)
    log.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
    first = message.splitlines()[0] if message else type(exc).__name__
    return flight.FlightInternalError(f"internal error: {first}")


F = TypeVar("F", bound=Callable[..., Any])


def client_errors(handler: F) -> F:
    """Decorate a Flight handler so every exception leaves it as a typed client error."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            raise to_client_error(exc) from None

    return wrapper  # type: ignore[return-value]


def guarded_stream(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """`batches`, with errors raised while streaming mapped like handler errors."""
    try:
        yield from batches
    except GeneratorExit:
        raise
    except Exception as exc:
        raise to_client_error(exc) from None
