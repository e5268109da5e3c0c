"""The server's one typed configuration, from CLI flags and KRISHIV_* variables."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine import EngineConfig
from engine.distributed.faults import BadFault, Fault, Faults


class ConfigError(Exception):
    """A setting is missing, malformed or unsafe; the server refuses to start."""


@dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[str, ...] = ()
    token_file: Path | None = None
    reload_interval_s: float = 30.0
    # Basic auth users as name -> password; a bearer token is issued on success.
    users: Mapping[str, str] = field(default_factory=dict)
    issued_token_ttl_s: float = 12 * 3600.0
    # KRISHIV_EXECUTOR_TASK_BEARER_TOKEN: executors' control calls carry it.
    executor_token: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.token_file or self.users)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50050
    warehouse: Path = Path("warehouse")
    catalog_uri: str | None = None
    catalog_properties: Mapping[str, str] = field(default_factory=dict)
    demo: bool = False
    demo_scale: float = 0.01
    insecure: bool = False
    max_upload_bytes: int = 1024**3
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Local executor processes to start; with neither these nor `distributed`,
    # queries run embedded in this process.
    executors: int = 0
    distributed: bool = False
    heartbeat_timeout_s: float = 10.0  # an executor silent this long is lost
    no_executor_grace_s: float = 30.0  # queries fail after this long with no executor
    task_retries: int = 4  # failures of one task before its query fails
    # Partitions of each hash exchange; None: the cores of the executors' machines.
    shuffle_partitions: int | None = None
    direct_results: bool = False  # clients fetch results from the executors
    broadcast_limit_bytes: int = 10 * 1024 * 1024  # smaller join inputs are broadcast
    # Tests: check the coordinator's invariants after every event (KRISHIV_VALIDATE_STATE=1).
    validate_state: bool = False
    auth: AuthConfig = field(default_factory=AuthConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> None:
        if not self.auth.enabled and not is_loopback(self.host) and not self.insecure:
            raise ConfigError(
                f"refusing to listen on {self.host} without bearer tokens: set "
                "KRISHIV_COORDINATOR_BEARER_TOKENS (or a token file), or pass --insecure"
            )
        if self.distributed and not self.executors and not self.auth.executor_token and (
            not self.insecure
        ):
            raise ConfigError(
                "a coordinator needs KRISHIV_EXECUTOR_TASK_BEARER_TOKEN (or --insecure on "
                "every node)"
            )
        if self.direct_results and not self.distributed:
            raise ConfigError("--direct-results needs executors (--executors N, or "
                              "`krishiv coordinator`)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.demo_scale <= 0:
            raise ConfigError("--demo-scale must be positive")


    @property
    def scheme(self) -> str:
        return "grpc+tls" if self.tls_cert else "grpc"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_tokens(text: str) -> list[str]:
    """Tokens separated by commas or newlines; blanks and `#` comment lines dropped."""
    tokens = []
    for line in text.replace(",", "\n").splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tokens


def parse_users(text: str) -> dict[str, str]:
    """`user:password` entries, separated by commas or newlines."""
    users: dict[str, str] = {}
    for entry in split_tokens(text):
        name, sep, password = entry.partition(":")
        if not sep or not name or not password:
            raise ConfigError(f"user entry {name or entry[:20]!r} must be 'user:password'")
        users[name] = password
    return users


def auth_config(
    env: Mapping[str, str],
    tokens: tuple[str, ...] = (),
    token_file: str | None = None,
    reload_interval_s: float | None = None,
    users_file: str | None = None,
) -> AuthConfig:
    """Auth settings: flags first, then the KRISHIV_* variables of DESIGN.md section 4."""
    accepted = list(tokens)
    accepted += split_tokens(env.get("KRISHIV_COORDINATOR_BEARER_TOKENS", ""))
    accepted += split_tokens(env.get("KRISHIV_COORDINATOR_BEARER_TOKEN", ""))
    file_name = token_file or env.get("KRISHIV_COORDINATOR_BEARER_TOKEN_FILE") or None
    interval = reload_interval_s
    if interval is None:
        raw = env.get("KRISHIV_COORDINATOR_AUTH_RELOAD_INTERVAL_SECS", "30")
        try:
            interval = float(raw)
        except ValueError:
            raise ConfigError(
                f"KRISHIV_COORDINATOR_AUTH_RELOAD_INTERVAL_SECS is not a number: {raw!r}"
            ) from None
    if interval <= 0:
        raise ConfigError("the token file reload interval must be positive")
    users = parse_users(env.get("KRISHIV_USERS", ""))
    users_path = users_file or env.get("KRISHIV_USERS_FILE")
    if users_path:
        try:
            users.update(parse_users(Path(users_path).read_text()))
        except OSError as exc:
            raise ConfigError(f"cannot read users file {users_path}: {exc.strerror}") from None
    return AuthConfig(
        tokens=tuple(dict.fromkeys(accepted)),
        token_file=Path(file_name) if file_name else None,
        reload_interval_s=interval,
        users=users,
    )


def parse_size(text: str, allow_zero: bool = False) -> int:
    """A byte count such as `512M`, `2G` or `1048576`."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = cleaned, ""
    if cleaned and cleaned[-1] in units:
        number, unit = cleaned[:-1], cleaned[-1]
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 2G)") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"size must be positive: {text!r}")
    return int(value * units[unit])


def fault_config(texts: tuple[str, ...], env: Mapping[str, str]) -> Faults:
    """Injected faults, for chaos tests only: refused unless the environment opts in."""
    if not texts:
        return Faults()
    if env.get("KRISHIV_ENABLE_FAULT_INJECTION") != "1":
        raise ConfigError("--fault is for tests: it needs KRISHIV_ENABLE_FAULT_INJECTION=1")
    try:
        return Faults(tuple(Fault.parse(text) for text in texts))
    except BadFault as exc:
        raise ConfigError(str(exc)) from None


def environ() -> Mapping[str, str]:
    """The process environment; read only when building the config."""
    return os.environ
