"""Bearer-token and Basic authentication for the Flight SQL endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from pathlib import Path

from flight_server.config import AuthConfig, ConfigError, split_tokens
from flight_server.errors import Unauthenticated

log = logging.getLogger("krishiv.auth")

_MAX_TOKEN_LENGTH = 4096
_MAX_TOKEN_FILE_BYTES = 1024 * 1024


def _matches_any(candidate: str, accepted: tuple[str, ...]) -> bool:
    """Constant-time comparison against every token, never stopping early."""
    probe = candidate.encode()
    found = False
    for token in accepted:
        found |= hmac.compare_digest(probe, token.encode())
    return found


def _valid_token_text(token: str) -> bool:
    return 0 < len(token) <= _MAX_TOKEN_LENGTH and token.isprintable() and " " not in token


class TokenFile:
    """Accepted tokens read from a file and re-read every interval.

    A missing, empty, oversized or garbled file keeps the last good set, so a bad
    edit neither opens the server to everyone nor locks everyone out.
    """

    def __init__(self, path: Path, interval_s: float) -> None:
        self._path = path
        self._interval_s = interval_s
        self._tokens: tuple[str, ...] = ()
        self._stop = threading.Event()
        self._tokens = self._read_or_raise()
        self._thread = threading.Thread(target=self._reload_loop, name="token-file", daemon=True)
        self._thread.start()

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._tokens

    def _read_or_raise(self) -> tuple[str, ...]:
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {self._path}: {exc.strerror}") from None
        tokens = self._parse(raw)
        if tokens is None:
            raise ConfigError(f"token file {self._path} holds no valid token")
        return tokens

    @staticmethod
    def _parse(raw: bytes) -> tuple[str, ...] | None:
        if len(raw) > _MAX_TOKEN_FILE_BYTES:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        tokens = split_tokens(text)
        if not tokens or not all(_valid_token_text(t) for t in tokens):
            return None
        return tuple(tokens)

    def reload(self) -> None:
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            log.warning("token file %s unreadable (%s); keeping previous tokens",
                        self._path, exc.strerror)
            return
        tokens = self._parse(raw)
        if tokens is None:
            log.warning("token file %s is empty or malformed; keeping previous tokens",
                        self._path)
            return
        if tokens != self._tokens:
            log.info("token file %s reloaded: %d tokens", self._path, len(tokens))
        self._tokens = tokens

    def _reload_loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.reload()

    def close(self) -> None:
        self._stop.set()


class Authenticator:
    """Decides who may call: configured tokens, file tokens, Basic users' issued tokens."""

    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self._static = tuple(t for t in config.tokens if t)
        self._file = (
            TokenFile(config.token_file, config.reload_interval_s) if config.token_file else None
        )
        self._users = dict(config.users)
        self._executor_token = config.executor_token or ""
        self._issued: dict[str, float] = {}
        self._issued_ttl_s = config.issued_token_ttl_s
        self._lock = threading.Lock()

    def bearer_kind(self, token: str) -> str | None:
        """'bearer' for a configured token, 'login' for one issued to a Basic user."""
        if not token:
            return None
        file_tokens = self._file.tokens if self._file else ()
        if _matches_any(token, self._static + file_tokens):
            return "bearer"
        now = time.monotonic()
        with self._lock:
            # Keyed by digest: the lookup reveals nothing about the token's bytes.
            expiry = self._issued.get(_digest(token))
            return "login" if expiry is not None and expiry > now else None

    def login(self, username: str, password: str) -> str | None:
        """A fresh bearer token for a valid user, else None."""
        expected = self._users.get(username)
        # Compare against a dummy on unknown users so timing does not reveal names.
        ok = hmac.compare_digest(password.encode(), (expected or "\0").encode())
        if expected is None or not ok:
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._issued = {t: e for t, e in self._issued.items() if e > now}
            self._issued[_digest(token)] = now + self._issued_ttl_s
        return token

    def authenticate(self, headers: dict[str, str]) -> tuple[str, list[tuple[str, str]]]:
        """(identity, headers to send back) for a call's headers, or Unauthenticated.

        A Basic login is answered with a fresh bearer token in the `authorization`
        response header, which ADBC and JDBC clients then send on every call.
        """
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if (self._executor_token and scheme.lower() == "bearer"
                and _matches_any(credential.strip(), (self._executor_token,))):
            return EXECUTOR_IDENTITY, []
        if not self.enabled:
            return "anonymous", []
        kind = self.bearer_kind(credential.strip()) if scheme.lower() == "bearer" else None
        if kind is not None:
            return token_identity(kind, credential.strip()), []
        if scheme.lower() == "basic":
            pair = _decode_basic(credential)
            token = self.login(*pair) if pair else None
            if token:
                return token_identity("login", token), [("authorization", f"Bearer {token}")]
            raise Unauthenticated("invalid username or password")
        if not scheme:
            raise Unauthenticated("missing credentials: send 'authorization: Bearer <token>'")
        raise Unauthenticated("invalid bearer token")

    def close(self) -> None:
        if self._file:
            self._file.close()


EXECUTOR_IDENTITY = "executor"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_identity(kind: str, token: str) -> str:
    """A stable name for a token's holder that does not reveal the token.

    `login:` names one Basic login (its issued token); `bearer:` a configured token,
    which many clients may share.
    """
    return f"{kind}:" + _digest(token)[:32]


def _decode_basic(value: str) -> tuple[str, str] | None:
    encoded = value.strip()
    # The Go client sends unpadded base64.
    encoded += "=" * (-len(encoded) % 4)
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


