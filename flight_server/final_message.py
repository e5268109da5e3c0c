"""The last message of a server stream sent with the call's status, in one operation.

grpcio's synchronous server sends each message of a server stream as an operation of its
own and parks the handler thread until the completion-queue thread reports it sent, then
sends the status as one more operation; each such hand-off between threads costs 0.1-0.3
ms here, and a short answer (`SELECT 1`'s DoGet, a DoAction result) is mostly hand-offs.
A unary answer goes out as one operation: message and status together. For streams
whose messages are all known when the call starts, the handler marks the last one
`Final`, and `send_final_with_status` (installed once, before the server starts) sends it
the way grpcio sends a unary answer. Only marked messages change path: a stream still
producing its messages sends each as it comes, never held back for the next.

The sending loop replaced is grpcio's own (`grpc._server`, not a public API): it is
replaced only where its functions have the shapes this module was written against;
otherwise `Final` is an ordinary message (`message_bytes` unwraps it) and grpcio sends as
it always did.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("krishiv.transport")

# grpcio's loop that sends a server stream's messages, and the helpers it calls.
_LOOP = "_send_message_callback_to_blocking_iterator_adapter"
_LOOP_PARAMETERS = ["rpc_event", "state", "send_response_callback", "response_iterator"]
_HELPERS = {"_take_response_from_response_iterator": ["rpc_event", "state",
                                                      "response_iterator"],
            "_status": ["rpc_event", "state", "serialized_response"],
            "_is_rpc_state_active": ["state"]}


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


def send_final_with_status() -> bool:
    """Replace grpcio's stream-sending loop with one that sends a Final message together
    with the status; False (and nothing replaced) if grpcio's internals are not the ones
    expected."""
    try:
        from grpc import _server as internals
    except ImportError:
        return False
    found: dict[str, Any] = {name: getattr(internals, name, None)
                             for name in (_LOOP, *_HELPERS)}
    if getattr(found[_LOOP], "sends_final_with_status", False):
        return True
    expected = {_LOOP: _LOOP_PARAMETERS, **_HELPERS}
    if not all(_parameters(found[name]) == expected[name] for name in expected):
        log.debug("grpcio's stream sending is not the one known: Final messages go alone")
        return False
    setattr(internals, _LOOP, _send_loop(found["_take_response_from_response_iterator"],
                                         found["_status"], found["_is_rpc_state_active"]))
    return True


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
