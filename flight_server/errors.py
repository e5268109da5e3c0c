"""Every error a client can see, with its gRPC status code, mapped in this one place."""

from __future__ import annotations

import logging

import grpc

from catalog import (
    AlreadyExists,
    CatalogUnavailable,
    InvalidData,
    NamespaceNotFound,
    TableNotFound,
)
from engine import errors as engine_errors

log = logging.getLogger("krishiv.server")


class ClientError(Exception):
    """An error reported to the client as `code` with a one-line message."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(ClientError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ClientError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(ClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(ClientError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ClientError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(ClientError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ClientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ClientError):
    code = grpc.StatusCode.CANCELLED


class Unavailable(ClientError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(ClientError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(ClientError):
    code = grpc.StatusCode.INTERNAL


_BY_TYPE: list[tuple[tuple[type[BaseException], ...], type[ClientError]]] = [
    ((engine_errors.InvalidQuery, InvalidData), InvalidArgument),
    ((engine_errors.ObjectNotFound, TableNotFound, NamespaceNotFound), NotFound),
    ((AlreadyExists,), AlreadyExistsError),
    ((engine_errors.NotAllowed,), PermissionDenied),
    ((engine_errors.NotSupported,), Unimplemented),
    ((engine_errors.ResourceExhausted,), ResourceExhausted),
    ((engine_errors.QueryTimeout,), DeadlineExceeded),
    ((engine_errors.QueryCancelled,), Cancelled),
    ((CatalogUnavailable, engine_errors.ServerBusy, engine_errors.DataUnavailable),
     Unavailable),
]


def one_line(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]


def to_client_error(exc: BaseException) -> ClientError:
    """The typed error a client should receive for `exc`; unexpected ones are logged."""
    if isinstance(exc, ClientError):
        return exc
    for types, client_type in _BY_TYPE:
        if isinstance(exc, types):
            return client_type(one_line(str(exc)))
    log.error("internal error", exc_info=(type(exc), exc, exc.__traceback__))
    return Internal(f"internal error: {one_line(str(exc)) or type(exc).__name__}")
