"""Client sessions: options (catalog, schema, dialect) kept across calls.

A session is found by the `arrow_flight_session_id` cookie, or else by the bearer token
issued at the client's Basic login, so clients without cookie support keep their
options too. Configured tokens are shared by many clients and never name a session.
Calls with neither get a fresh default session each time.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

import pyarrow as pa

from engine import Session, SqlEngine
from engine.dialects import DATAFUSION, check_dialect
from engine.errors import InvalidQuery
from flight_server.generated import Flight_pb2 as fpb
from flight_server.transport import Call

COOKIE = "arrow_flight_session_id"
_IDLE_TTL_S = 8 * 3600.0

Errors = fpb.SetSessionOptionsResult


@dataclass
class ClientSession:
    id: str
    owner: str  # the identity that created it; nobody else may use it
    default_schema: str
    dialect: str = DATAFUSION
    temporary: dict[str, pa.Table] = field(default_factory=dict)
    used: float = field(default_factory=time.monotonic)


class SessionStore:
    def __init__(self, engine: SqlEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._by_key: dict[str, ClientSession] = {}

    def count(self) -> int:
        """Live client sessions (for metrics and leak checks)."""
        with self._lock:
            return len({id(state) for state in self._by_key.values()})

    def _keys(self, call: Call) -> list[str]:
        keys = []
        cookie = _cookie_value(call.headers.get("cookie", ""))
        if cookie:
            keys.append(f"cookie:{cookie}")
        if call.identity.startswith("login:"):
            keys.append(call.identity)
        return keys

    def _find(self, call: Call) -> ClientSession | None:
        now = time.monotonic()
        with self._lock:
            for key in self._keys(call):
                found = self._by_key.get(key)
                if (found is not None and found.owner == call.identity
                        and now - found.used < _IDLE_TTL_S):
                    found.used = now
                    return found
        return None

    def session_for(self, call: Call) -> Session:
        """The engine session for this call, with the client's options applied."""
        state = self._find(call)
        dialect = call.headers.get("dialect") or (state.dialect if state else DATAFUSION)
        if state is None:
            return self._engine.session(None, check_dialect(dialect))
        return self._engine.session(state.default_schema, check_dialect(dialect), state.temporary)

    def persistent_session_for(self, call: Call) -> Session:
        """Like session_for, creating a kept session (cookie, token) if the call has none."""
        state = self._find_or_create(call)
        dialect = call.headers.get("dialect") or state.dialect
        return self._engine.session(state.default_schema, check_dialect(dialect), state.temporary)

    def _find_or_create(self, call: Call) -> ClientSession:
        found = self._find(call)
        if found is not None:
            return found
        state = ClientSession(secrets.token_urlsafe(24), call.identity,
                              self._engine.config.default_schema)
        with self._lock:
            self._expire()
            # Only the id we made, never one the client chose, names the session.
            self._by_key[f"cookie:{state.id}"] = state
            if call.identity.startswith("login:"):
                self._by_key[call.identity] = state
        call.reply_headers.append(("set-cookie", f"{COOKIE}={state.id}"))
        return state

    def set_options(self, call: Call, request: fpb.SetSessionOptionsRequest
                    ) -> fpb.SetSessionOptionsResult:
        state = self._find_or_create(call)
        result = fpb.SetSessionOptionsResult()
        for name, value in request.session_options.items():
            error = self._apply(state, name.lower(), value)
            if error is not None:
                result.errors[name].value = error
        return result

    def _apply(self, state: ClientSession, name: str, value: fpb.SessionOptionValue) -> int | None:
        if name not in ("catalog", "schema", "dialect"):
            return Errors.INVALID_NAME
        if value.WhichOneof("option_value") != "string_value":
            return Errors.INVALID_VALUE
        text = value.string_value
        if name == "catalog":
            return None if text == self._engine.config.catalog_name else Errors.INVALID_VALUE
        if name == "schema":
            if not self._engine.catalog.namespace_exists(text):
                return Errors.INVALID_VALUE
            state.default_schema = text
            return None
        try:
            state.dialect = check_dialect(text)
        except InvalidQuery:
            return Errors.INVALID_VALUE
        return None

    def get_options(self, call: Call) -> fpb.GetSessionOptionsResult:
        state = self._find(call)
        result = fpb.GetSessionOptionsResult()
        values = {
            "catalog": self._engine.config.catalog_name,
            "schema": state.default_schema if state else self._engine.config.default_schema,
            "dialect": state.dialect if state else DATAFUSION,
        }
        for name, text in values.items():
            result.session_options[name].string_value = text
        return result

    def close(self, call: Call) -> fpb.CloseSessionResult:
        state = self._find(call)
        if state is None:
            return fpb.CloseSessionResult(status=fpb.CloseSessionResult.CLOSED)
        with self._lock:
            for key in [k for k, v in self._by_key.items() if v is state]:
                del self._by_key[key]
        return fpb.CloseSessionResult(status=fpb.CloseSessionResult.CLOSED)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, v in self._by_key.items() if now - v.used > _IDLE_TTL_S]:
            del self._by_key[key]


def _cookie_value(header: str) -> str:
    if not header:
        return ""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return ""
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else ""
