"""Two steps of grpcio's synchronous server done with fewer hand-offs between threads.

Each hand-off (one thread parks, another wakes it) costs 0.1-0.3 ms here, and a short
answer such as `SELECT 1`'s is mostly hand-offs. Both steps replace functions of
`grpc._server`, which is not a public API: each is replaced only where grpcio's functions
have the shapes this module was written against; otherwise grpcio works as it always
did. `install()` (once, before a server starts) puts both in place.

- **A stream's last message goes with the status.** grpcio sends each message of a
  server stream as an operation of its own and parks the handler thread until the
  completion-queue thread reports it sent, then sends the status as one more operation.
  A unary answer goes out as one operation: message and status together. For streams
  whose messages are all known when the call starts, the handler marks the last one
  `Final`, and it is sent the way grpcio sends a unary answer. Only marked messages
  change path: a stream still producing its messages sends each as it comes, never held
  back for the next.
- **A call that takes one request is read first, and a quick one answered at once.**
  grpcio hands such a call to a pool thread, which starts reading the request and parks
  until the completion-queue thread reports it read: the call waits for two wake-ups
  before its handler runs, and a third to hand the answer back. Here the
  completion-queue thread reads the request itself, then asks the handler
  (`answers_at_once(request)`, an attribute of the method's behavior) whether the
  answer is quick: known without I/O, planning or a query run, such as a constant's
  rows. While the server is nearly idle, a quick call is answered on the spot (a
  stream's messages sent one after another, the last with the status, none waited
  for); any other goes to the pool with its request already read.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("krishiv.transport")

# grpcio's functions the replacements call or replace, by their parameters.
_CALL = ["rpc_event", "state", "method_handler", "default_thread_pool"]
_IN_POOL = ["rpc_event", "state", "behavior", "argument_thunk", "request_deserializer",
            "response_serializer"]
_HELPERS = {
    "_take_response_from_response_iterator": ["rpc_event", "state", "response_iterator"],
    "_status": ["rpc_event", "state", "serialized_response"],
    "_is_rpc_state_active": ["state"],
}
# The loop that sends a server stream's messages, and what calls it.
_LOOP = "_send_message_callback_to_blocking_iterator_adapter"
_LOOP_SHAPES = {
    _LOOP: ["rpc_event", "state", "send_response_callback", "response_iterator"],
    "_stream_response_in_pool": _IN_POOL,
    **_HELPERS,
}
# The start of calls, and what the replacement uses.
_STARTS = ("_handle_unary_unary", "_handle_unary_stream")
_COUNTED = ("_handle_stream_unary", "_handle_stream_stream")
_START_SHAPES = {
    **{name: _CALL for name in _STARTS + _COUNTED},
    "_unary_response_in_pool": _IN_POOL,
    "_stream_response_in_pool": _IN_POOL,
    "_select_thread_pool_for_behavior": ["behavior", "default_thread_pool"],
    "_receive_message": ["state", "call", "request_deserializer"],
    "_call_behavior": ["rpc_event", "state", "behavior", "argument", "request_deserializer",
                       "send_response_callback"],
    "_serialize_response": ["rpc_event", "state", "response", "response_serializer"],
    "_possibly_finish_call": ["state", "token"],
    "_get_initial_metadata_operation": ["state", "metadata"],
    "_get_send_message_op_flags_from_state": ["state"],
    "_abort": ["state", "call", "code", "details"],
    **_HELPERS,
}
_START_NAMES = ("_CLOSED", "_EMPTY_FLAGS", "_RECEIVE_MESSAGE_TOKEN", "_SEND_MESSAGE_TOKEN",
                "_SEND_INITIAL_METADATA_AND_SEND_MESSAGE_TOKEN", "_RPCState", "cygrpc")
_STATE_FIELDS = {"request", "client", "due", "context", "condition",
                 "initial_metadata_allowed"}


@dataclass(frozen=True)
class Final:
    """A stream's last message (bytes or a protobuf message)."""

    message: Any


def message_bytes(message: Any) -> bytes:
    """A response as sent: bytes as they are, a protobuf message serialized."""
    if isinstance(message, Final):
        message = message.message
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def with_final(messages: list[Any]) -> Iterator[Any]:
    """`messages` in order, the last marked Final."""
    yield from messages[:-1]
    if messages:
        yield Final(messages[-1])


def install() -> None:
    """Both shortcuts, each where grpcio's internals are the ones known."""
    send_final_with_status()
    answer_at_once()


def send_final_with_status() -> bool:
    """Replace grpcio's stream-sending loop with one that sends a Final message together
    with the status; False (and nothing replaced) if grpcio's internals are not the ones
    expected."""
    internals = _internals()
    if getattr(getattr(internals, _LOOP, None), "sends_final_with_status", False):
        return True
    if not _has_shapes(internals, _LOOP_SHAPES):
        log.debug("grpcio's stream sending is not the one known: Final messages go alone")
        return False
    setattr(internals, _LOOP, _send_loop(internals._take_response_from_response_iterator,
                                         internals._status, internals._is_rpc_state_active))
    return True


def answer_at_once() -> bool:
    """Replace grpcio's start of a call that takes one request with one that reads the
    request first and answers quick calls on the spot; False (and nothing replaced) if
    grpcio's internals are not the ones expected."""
    internals = _internals()
    if isinstance(getattr(getattr(internals, "_handle_unary_unary", None), "__self__", None),
                  _CallStart):
        return True
    if not (_has_shapes(internals, _START_SHAPES)
            and all(hasattr(internals, name) for name in _START_NAMES)
            and set(vars(internals._RPCState())) >= _STATE_FIELDS):
        log.debug("grpcio's call start is not the one known: calls start as before")
        return False
    in_flight = _InFlight()
    for name, streaming in zip(_STARTS, (False, True), strict=True):
        setattr(internals, name, _CallStart(internals, streaming, in_flight).handle)
    for name in _COUNTED:
        setattr(internals, name, in_flight.counting(getattr(internals, name)))
    return True


def _internals() -> Any:
    try:
        from grpc import _server
    except ImportError:
        return None
    return _server


def _has_shapes(internals: Any, shapes: dict[str, list[str]]) -> bool:
    return internals is not None and all(
        _parameters(getattr(internals, name, None)) == parameters
        for name, parameters in shapes.items())


def _parameters(function: Callable[..., Any] | None) -> list[str] | None:
    if function is None:
        return None
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def _send_loop(take: Callable[..., tuple[Any, bool]], status: Callable[..., None],
               active: Callable[[Any], bool]) -> Callable[..., None]:
    def send(rpc_event: Any, state: Any, send_response: Callable[[Any], None],
             responses: Iterator[Any]) -> None:
        """grpcio's loop (take a response, send it, stop once the call is over), but a
        Final response goes with the status, then the handler's iterator runs out."""
        while True:
            response, proceed = take(rpc_event, state, responses)
            if not proceed:
                return
            if isinstance(response, Final):
                try:
                    data = message_bytes(response)
                except Exception:  # grpcio's own path ends the call with INTERNAL
                    send_response(response.message)
                    return
                status(rpc_event, state, data)
                for extra in responses:  # lets the handler's generator finish
                    log.error("a message after a stream's Final was dropped (%s)",
                              type(extra).__name__)
                return
            send_response(response)
            if not active(state):
                return

    send.sends_final_with_status = True  # type: ignore[attr-defined]
    return send


# Quick calls are answered on the completion-queue thread only while at most this many
# calls are in flight. Under load, Python threads queue for the GIL, every wait of that
# thread's would hold up all calls' messages, and the pool's threads share the waits
# better (64 clients refused by admission control, p50: 0.14-0.17 s in six runs of seven
# with the pool; 0.14-0.70 s, nine of eleven runs over 0.3 s, with every quick call
# answered there).
_QUICK_WHILE_IN_FLIGHT = 2


class _InFlight:
    """How many calls have started and not finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def start(self) -> None:
        with self._lock:
            self.count += 1

    def end(self, _: object = None) -> None:
        with self._lock:
            self.count -= 1

    def counting(self, handle: Callable[..., futures.Future[Any]]
                 ) -> Callable[..., futures.Future[Any]]:
        """grpcio's start of calls that stream requests (uploads), counted in flight."""
        def counted(rpc_event: Any, state: Any, method_handler: Any,
                    default_thread_pool: futures.ThreadPoolExecutor) -> futures.Future[Any]:
            running = handle(rpc_event, state, method_handler, default_thread_pool)
            self.start()
            running.add_done_callback(self.end)
            return running

        return counted


class _CallStart:
    """The start of calls that take one request: read it on the completion-queue thread,
    then answer there if the server is nearly idle and the handler says the answer is
    quick (`answers_at_once`), else hand the call with its request to the pool, as
    grpcio does."""

    def __init__(self, internals: Any, streaming: bool, in_flight: _InFlight) -> None:
        self._grpc = internals
        self._streaming = streaming
        self._in_flight = in_flight

    def handle(self, rpc_event: Any, state: Any, method_handler: Any,
               default_thread_pool: futures.ThreadPoolExecutor) -> futures.Future[None]:
        grpc = self._grpc
        finished: futures.Future[None] = futures.Future()
        self._in_flight.start()
        finished.add_done_callback(self._in_flight.end)
        read = grpc._receive_message(state, rpc_event.call, method_handler.request_deserializer)

        def request_read(event: Any) -> Any:
            outcome = read(event)
            try:
                self._start(rpc_event, state, method_handler, default_thread_pool, finished)
            except Exception:  # an escape would end grpcio's completion-queue thread
                log.exception("a call could not be started")
                self._end_with_internal(rpc_event, state, b"the call could not be started")
                if not finished.done():
                    finished.set_result(None)
            return outcome

        with state.condition:
            rpc_event.call.start_server_batch(
                (grpc.cygrpc.ReceiveMessageOperation(grpc._EMPTY_FLAGS),), request_read)
            state.due.add(grpc._RECEIVE_MESSAGE_TOKEN)
        return finished

    def _start(self, rpc_event: Any, state: Any, method_handler: Any,
               default_thread_pool: futures.ThreadPoolExecutor,
               finished: futures.Future[None]) -> None:
        grpc = self._grpc
        with state.condition:
            request, state.request = state.request, None
            active = grpc._is_rpc_state_active(state)
            if active and request is None and state.client is grpc._CLOSED:
                grpc._abort(state, rpc_event.call, grpc.cygrpc.StatusCode.unimplemented,
                            b"the call requires exactly one request message")
        if request is None or not active:  # cancelled, unreadable (answered) or not sent
            finished.set_result(None)
            return
        behavior = (method_handler.unary_stream if self._streaming
                    else method_handler.unary_unary)
        arguments = (rpc_event, state, behavior, lambda: request,
                     method_handler.request_deserializer, method_handler.response_serializer)
        if (self._in_flight.count <= _QUICK_WHILE_IN_FLIGHT
                and _is_quick(behavior, request)):
            state.context.run(self._answer_here, *arguments)
            finished.set_result(None)
            return
        in_pool = (grpc._stream_response_in_pool if self._streaming
                   else grpc._unary_response_in_pool)
        pool = grpc._select_thread_pool_for_behavior(behavior, default_thread_pool)
        try:
            running = pool.submit(state.context.run, in_pool, *arguments)
        except RuntimeError:  # the pool is shut down: the server is stopping
            with state.condition:
                grpc._abort(state, rpc_event.call, grpc.cygrpc.StatusCode.unavailable,
                            b"the server is stopping")
            finished.set_result(None)
            return
        running.add_done_callback(lambda _: finished.set_result(None))

    def _answer_here(self, rpc_event: Any, state: Any, behavior: Any,
                     argument_thunk: Callable[[], Any], request_deserializer: Any,
                     response_serializer: Any) -> None:
        """The call answered on this thread, which must not wait: a stream's messages
        are all taken first, then sent one after another as each is reported sent."""
        grpc = self._grpc
        if not self._streaming:
            grpc._unary_response_in_pool(rpc_event, state, behavior, argument_thunk,
                                         request_deserializer, response_serializer)
            return
        responses, proceed = grpc._call_behavior(rpc_event, state, behavior,
                                                 argument_thunk(), request_deserializer)
        messages: list[bytes] = []
        while proceed:
            response, proceed = grpc._take_response_from_response_iterator(
                rpc_event, state, responses)
            if response is None:
                break
            data = grpc._serialize_response(rpc_event, state, response, response_serializer)
            if data is None:
                return
            messages.append(data)
        if proceed:
            with state.condition:
                self._send_in_turn(rpc_event, state, messages)

    def _send_in_turn(self, rpc_event: Any, state: Any, messages: list[bytes]) -> None:
        """Send `messages[0]` and, once it is sent, the rest; the last with the status.
        Called holding the call's condition."""
        grpc = self._grpc
        if not grpc._is_rpc_state_active(state):
            return
        if len(messages) <= 1:
            grpc._status(rpc_event, state, messages[0] if messages else None)
            return
        send = grpc.cygrpc.SendMessageOperation(
            messages[0], grpc._get_send_message_op_flags_from_state(state))
        operations: tuple[Any, ...]
        if state.initial_metadata_allowed:
            operations = (grpc._get_initial_metadata_operation(state, None), send)
            state.initial_metadata_allowed = False
            token = grpc._SEND_INITIAL_METADATA_AND_SEND_MESSAGE_TOKEN
        else:
            operations, token = (send,), grpc._SEND_MESSAGE_TOKEN

        def sent(event: Any) -> Any:
            with state.condition:
                # The token first: the next message may be sent under the same one.
                outcome = grpc._possibly_finish_call(state, token)
                if outcome[0] is None:  # the call goes on
                    try:
                        self._send_in_turn(rpc_event, state, messages[1:])
                    except Exception:  # an escape would end grpcio's completion-queue thread
                        log.exception("a stream's next message could not be sent")
                        self._end_with_internal(rpc_event, state, b"the answer could not be sent")
                return outcome

        rpc_event.call.start_server_batch(operations, sent)
        state.due.add(token)

    def _end_with_internal(self, rpc_event: Any, state: Any, details: bytes) -> None:
        """End a call that is still open with INTERNAL."""
        with state.condition:
            if self._grpc._is_rpc_state_active(state):
                self._grpc._abort(state, rpc_event.call,
                                  self._grpc.cygrpc.StatusCode.internal, details)


def _is_quick(behavior: Any, request: Any) -> bool:
    quick = getattr(behavior, "answers_at_once", None)
    if quick is None:
        return False
    try:
        return bool(quick(request))
    except Exception:  # the pool's run of the call reports what is wrong
        log.debug("answers_at_once failed; the call goes to the pool", exc_info=True)
        return False
