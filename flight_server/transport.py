"""Arrow Flight over grpcio.

grpcio rather than pyarrow's Flight server: pyarrow cannot answer RESOURCE_EXHAUSTED and
appends Python tracebacks to every status it did not create itself, while grpcio gives
exact status codes and messages and headers both ways. It streams slower than pyarrow's
C++ server (0.5-0.9 of its MB/s here, bench/RESULTS.md); larger messages narrow the gap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import pyarrow as pa

from engine.arrow_types import ResultBatch
from flight_server import grpc_shortcuts
from flight_server.errors import ClientError, Unimplemented, to_client_error
from flight_server.generated import Flight_pb2 as fpb
from flight_server.grpc_shortcuts import message_bytes, with_final
from flight_server.ipc import PutStream, encode_stream, schema_bytes

log = logging.getLogger("krishiv.transport")

SERVICE = "arrow.flight.protocol.FlightService"


@dataclass
class Call:
    """What a handler may know about the call it serves."""

    headers: dict[str, str]
    peer: str
    is_cancelled: Callable[[], bool]
    identity: str = ""
    reply_headers: list[tuple[str, str]] = field(default_factory=list)


class Authenticate(Protocol):
    def __call__(self, headers: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
        """(identity, headers to send back), or raise Unauthenticated."""
        ...


class FlightHandler(Protocol):
    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo: ...

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema: ...

    def do_get(
        self, call: Call, ticket: bytes
    ) -> tuple[pa.Schema, Iterable[ResultBatch]]:
        """The result's schema and batches: a list when all are known already."""
        ...

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]: ...

    def do_action(self, call: Call, kind: str, body: bytes) -> Iterable[bytes]:
        """The action's results: a list when all are known already."""
        ...

    def list_actions(self) -> list[tuple[str, str]]: ...

    def answers_at_once(self, method: str, request: Any) -> bool:
        """Whether the answer of `method` ("GetFlightInfo", "DoGet" or "DoAction") to
        `request` is quick: known without I/O, planning or running a query, and taking no
        lock held while waiting. grpcio's completion-queue thread then answers it itself
        (grpc_shortcuts)."""
        ...


def _headers(context: grpc.ServicerContext) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata():
        if isinstance(value, str):
            headers.setdefault(key.lower(), value)
    return headers


class FlightService:
    """Adapts gRPC calls to a FlightHandler: auth, IPC framing, typed errors."""

    def __init__(self, handler: FlightHandler, authenticate: Authenticate) -> None:
        self._handler = handler
        self._authenticate = authenticate

    def _start(self, context: grpc.ServicerContext) -> Call:
        headers = _headers(context)
        identity, reply = self._authenticate(headers)
        return Call(headers, context.peer(), lambda: not context.is_active(), identity, reply)

    @staticmethod
    def _send_headers(call: Call, context: grpc.ServicerContext) -> None:
        """Reply headers (issued token, session cookie) go out with the first response."""
        if call.reply_headers:
            context.send_initial_metadata(tuple(call.reply_headers))

    @staticmethod
    def _fail(context: grpc.ServicerContext, exc: BaseException) -> None:
        error = to_client_error(exc)
        context.abort(error.code, str(error) or error.code.name)

    def _unary(
        self, method: Callable[[Call, Any], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def serve(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                call = self._start(context)
                result = method(call, request)
                self._send_headers(call, context)
                return result
            except Exception as exc:  # every failure leaves as a typed status
                self._fail(context, exc)
                raise AssertionError("unreachable") from None

        return serve

    def _streaming(
        self, method: Callable[[Call, Any], Iterable[Any]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def serve(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                call = self._start(context)
                answer = method(call, request)
                # All known: the last goes out with the status (grpc_shortcuts).
                results = with_final(answer) if isinstance(answer, list) else iter(answer)
                first = next(results, None)
                self._send_headers(call, context)
                if first is not None:
                    yield first
                    yield from results
            except GeneratorExit:
                raise
            except Exception as exc:
                if context.is_active():
                    self._fail(context, exc)

        return serve

    # -- the Flight methods -----------------------------------------------------------
    def handshake(self, call: Call, requests: Iterator[fpb.HandshakeRequest]
                  ) -> Iterator[fpb.HandshakeResponse]:
        for _ in requests:
            pass
        return iter(())

    def list_flights(self, call: Call, criteria: fpb.Criteria) -> Iterator[fpb.FlightInfo]:
        return iter(())

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        return self._handler.get_flight_info(call, descriptor)

    def poll_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.PollInfo:
        return fpb.PollInfo(info=self._handler.get_flight_info(call, descriptor))

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.SchemaResult:
        return fpb.SchemaResult(schema=schema_bytes(self._handler.get_schema(call, descriptor)))

    def do_get(self, call: Call, ticket: fpb.Ticket) -> Iterable[bytes]:
        schema, batches = self._handler.do_get(call, ticket.ticket)
        messages = encode_stream(schema, batches)
        return list(messages) if isinstance(batches, list) else messages

    def do_put(self, call: Call, messages: Iterator[bytes]) -> list[fpb.PutResult]:
        # A Flight SQL upload is answered once it is read whole: all known by then.
        upload = PutStream(messages)
        return [fpb.PutResult(app_metadata=metadata)
                for metadata in self._handler.do_put(call, upload)]

    def do_exchange(self, call: Call, messages: Iterator[fpb.FlightData]) -> Iterator[bytes]:
        raise Unimplemented("DoExchange is not supported")

    def do_action(self, call: Call, action: fpb.Action) -> Iterable[fpb.Result]:
        bodies = self._handler.do_action(call, action.type, action.body)
        results = (fpb.Result(body=body) for body in bodies)
        return list(results) if isinstance(bodies, list) else results

    def list_actions(self, call: Call, empty: fpb.Empty) -> list[fpb.ActionType]:
        return [fpb.ActionType(type=kind, description=description)
                for kind, description in self._handler.list_actions()]

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        def quick(name: str, serve: Callable[..., Any]) -> Callable[..., Any]:
            serve.answers_at_once = (  # type: ignore[attr-defined]
                lambda request: self._handler.answers_at_once(name, request))
            return serve

        def unary(method: Callable[..., Any], request: Any, name: str = ""
                  ) -> grpc.RpcMethodHandler:
            serve = self._unary(method)
            return grpc.unary_unary_rpc_method_handler(
                quick(name, serve) if name else serve,
                request_deserializer=request.FromString, response_serializer=message_bytes)

        def out_stream(method: Callable[..., Any], request: Any, name: str = ""
                       ) -> grpc.RpcMethodHandler:
            serve = self._streaming(method)
            return grpc.unary_stream_rpc_method_handler(
                quick(name, serve) if name else serve,
                request_deserializer=request.FromString, response_serializer=message_bytes)

        def both_streams(method: Callable[..., Any], parse: Callable[[bytes], Any]
                         ) -> grpc.RpcMethodHandler:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method), request_deserializer=parse,
                response_serializer=message_bytes)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "Handshake": both_streams(self.handshake, fpb.HandshakeRequest.FromString),
            "ListFlights": out_stream(self.list_flights, fpb.Criteria),
            "GetFlightInfo": unary(self.get_flight_info, fpb.FlightDescriptor, "GetFlightInfo"),
            "PollFlightInfo": unary(self.poll_flight_info, fpb.FlightDescriptor),
            "GetSchema": unary(self.get_schema, fpb.FlightDescriptor),
            "DoGet": out_stream(self.do_get, fpb.Ticket, "DoGet"),
            # DoPut takes FlightData as sent: ipc.PutStream cuts it apart without copies.
            "DoPut": both_streams(self.do_put, bytes),
            "DoExchange": both_streams(self.do_exchange, fpb.FlightData.FromString),
            "DoAction": out_stream(self.do_action, fpb.Action, "DoAction"),
            "ListActions": out_stream(self.list_actions, fpb.Empty),
        })


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key; a client CA turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            client_ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise OSError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


@dataclass(frozen=True)
class TransportConfig:
    max_workers: int = 64
    max_receive_bytes: int = 64 * 1024 * 1024
    tls: TlsFiles | None = None


def start_flight_server(
    service: FlightService, host: str, port: int, config: TransportConfig
) -> tuple[grpc.Server, int]:
    """A started gRPC server for `service`, and the port it bound."""
    grpc_shortcuts.install()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="flight"),
        options=[
            ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared silently
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", config.max_receive_bytes),
        ],
    )
    server.add_generic_rpc_handlers((service.rpc_handler(),))
    address = f"{host}:{port}"
    try:
        if config.tls is not None:
            bound = server.add_secure_port(address, config.tls.credentials())
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio's word for a port it cannot bind
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: the port is in use or the address "
                      "is not this machine's")
    server.start()
    return server, bound


__all__ = ["Call", "ClientError", "FlightHandler", "FlightService", "start_flight_server"]
