"""`krishiv` command line: `krishiv serve` runs the embedded Flight SQL server."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from types import FrameType

import click

from catalog import Catalog, IcebergCatalog
from engine import EngineConfig, SqlEngine
from engine.config import default_running_queries
from engine.demo import DemoDataError, load_tpch_demo
from engine.distributed.shuffle import sweep_work_dir
from engine.distributed.state import Settings
from flight_server.auth import Authenticator
from flight_server.cluster import CoordinatorService, ExecutorAgent
from flight_server.config import (
    AuthConfig,
    ConfigError,
    ServerConfig,
    auth_config,
    environ,
    fault_config,
    is_loopback,
    parse_size,
)
from flight_server.executor import ShuffleHandler, lenient
from flight_server.server import FlightSqlHandler
from flight_server.transport import (
    FlightService,
    TlsFiles,
    TransportConfig,
    start_flight_server,
)

log = logging.getLogger("krishiv")


@click.group()
def main() -> None:
    """Krishiv: an Arrow Flight SQL server on DataFusion and Iceberg."""


@main.command()
@click.option("--host", envvar="KRISHIV_HOST", default="127.0.0.1", show_default=True,
              help="Address to listen on.")
@click.option("--port", envvar="KRISHIV_PORT", default=50050, show_default=True, type=int)
@click.option("--warehouse", envvar="KRISHIV_WAREHOUSE", default="warehouse", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the embedded Iceberg catalog (sqlite) and its data files.")
@click.option("--catalog-uri", envvar="KRISHIV_CATALOG_URI", default=None,
              help="Iceberg REST catalog URI; default is the embedded sqlite catalog.")
@click.option("--catalog-property", "catalog_properties", multiple=True, metavar="KEY=VALUE",
              help="Extra property for the REST catalog (repeatable).")
@click.option("--demo/--no-demo", envvar="KRISHIV_DEMO", default=False,
              help="Load TPC-H demo tables into namespace 'tpch'.")
@click.option("--demo-scale", envvar="KRISHIV_DEMO_SCALE", default=0.01, show_default=True,
              type=float, help="TPC-H scale factor of the demo data.")
@click.option("--default-schema", envvar="KRISHIV_DEFAULT_SCHEMA", default="public",
              show_default=True, help="Namespace for unqualified table names.")
@click.option("--memory-limit", envvar="KRISHIV_MEMORY_LIMIT", default=None,
              help="Memory limit per query, e.g. 512M or 2G (default: none).")
@click.option("--read-cache", envvar="KRISHIV_READ_CACHE_BYTES", default="512M",
              show_default=True,
              help="Memory for results of plain table reads (columns of tables, no filter "
                   "or computed value), sent again while the tables keep their versions "
                   "(0: off; not used with executors).")
@click.option("--query-timeout", envvar="KRISHIV_QUERY_TIMEOUT_SECS", default=None, type=float,
              help="Seconds a query may run (default: no limit).")
@click.option("--executors", envvar="KRISHIV_EXECUTORS", default=0, show_default=True,
              type=click.IntRange(min=0),
              help="Start N local executor processes and run queries on them (single-node).")
@click.option("--heartbeat-timeout", envvar="KRISHIV_HEARTBEAT_TIMEOUT_SECS", default=10.0,
              show_default=True, type=click.FloatRange(min=0.5),
              help="Seconds without a heartbeat after which an executor counts as lost.")
@click.option("--executor-grace", envvar="KRISHIV_EXECUTOR_GRACE_SECS", default=30.0,
              show_default=True, type=click.FloatRange(min=0),
              help="Seconds a query waits with no executor before failing UNAVAILABLE.")
@click.option("--task-retries", envvar="KRISHIV_TASK_RETRIES", default=4, show_default=True,
              type=click.IntRange(min=1, max=100),
              help="Failures of one task before its query fails (executor loss not counted).")
@click.option("--shuffle-partitions", envvar="KRISHIV_SHUFFLE_PARTITIONS", default=None,
              type=click.IntRange(min=1, max=256),
              help="Partitions of each hash exchange (tasks of each join or group-by stage). "
                   " [default: the CPU cores of the machines running executors, each "
                   "machine counted once, at least 2]")
@click.option("--broadcast-limit", envvar="KRISHIV_BROADCAST_LIMIT", default="10M",
              show_default=True,
              help="A join input reading at most this many bytes of files is sent whole to "
                   "every task of the other input instead of shuffling both (0: never).")
@click.option("--direct-results", is_flag=True, envvar="KRISHIV_DIRECT_RESULTS",
              help="Clients fetch query results from the executors (FlightInfo endpoints "
                   "with signed tickets) instead of through this server.")
@click.option("--max-concurrent-queries", envvar="KRISHIV_MAX_CONCURRENT_QUERIES",
              default=None, type=click.IntRange(min=1),
              help="Queries running at once; more wait in a queue, served in arrival "
                   "order.  [default: twice the CPU cores, at least 4]")
@click.option("--max-queued-queries", envvar="KRISHIV_MAX_QUEUED_QUERIES", default=64,
              show_default=True, type=click.IntRange(min=0),
              help="Queries waiting for a slot; past that, UNAVAILABLE at once.")
@click.option("--max-upload", envvar="KRISHIV_MAX_UPLOAD_BYTES", default="1G", show_default=True,
              help="Largest bulk-ingest upload accepted, e.g. 512M; larger ones are refused.")
@click.option("--tls-cert", envvar="KRISHIV_TLS_CERT", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="PEM certificate chain: serve grpc+tls:// (with --tls-key).")
@click.option("--tls-key", envvar="KRISHIV_TLS_KEY", default=None,
              type=click.Path(dir_okay=False, path_type=Path), help="PEM private key.")
@click.option("--tls-client-ca", envvar="KRISHIV_TLS_CLIENT_CA", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="PEM CA bundle: require client certificates signed by it (mutual TLS).")
@click.option("--token", "tokens", multiple=True, help="Accepted bearer token (repeatable).")
@click.option("--token-file", default=None, help="File of accepted bearer tokens, reloaded.")
@click.option("--users-file", default=None, help="File of 'user:password' lines for Basic auth.")
@click.option("--insecure", is_flag=True, envvar="KRISHIV_INSECURE",
              help="Allow a non-loopback listen address without any token.")
@click.option("--log-level", envvar="KRISHIV_LOG_LEVEL", default="INFO", show_default=True)
def serve(
    host: str, port: int, warehouse: Path, catalog_uri: str | None,
    catalog_properties: tuple[str, ...], demo: bool, demo_scale: float, default_schema: str,
    memory_limit: str | None, read_cache: str, query_timeout: float | None, executors: int,
    heartbeat_timeout: float, executor_grace: float, task_retries: int,
    shuffle_partitions: int | None,
    broadcast_limit: str, direct_results: bool, max_concurrent_queries: int | None,
    max_queued_queries: int, max_upload: str,
    tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None,
    tokens: tuple[str, ...],
    token_file: str | None, users_file: str | None, insecure: bool, log_level: str,
    distributed: bool = False,
) -> None:
    """Run the Flight SQL server: embedded (default), or with --executors N local executors."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ServerConfig(
            host=host, port=port, warehouse=warehouse, catalog_uri=catalog_uri,
            catalog_properties=_properties(catalog_properties), demo=demo, demo_scale=demo_scale,
            insecure=insecure,
            max_upload_bytes=parse_size(max_upload),
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            executors=executors,
            distributed=distributed or executors > 0,
            heartbeat_timeout_s=heartbeat_timeout, no_executor_grace_s=executor_grace,
            task_retries=task_retries,
            shuffle_partitions=shuffle_partitions, direct_results=direct_results,
            broadcast_limit_bytes=parse_size(broadcast_limit, allow_zero=True),
            validate_state=environ().get("KRISHIV_VALIDATE_STATE") == "1",
            auth=_with_executor_token(auth_config(environ(), tokens, token_file, None,
                                                  users_file), executors),
            engine=EngineConfig(
                default_schema=default_schema,
                memory_limit_bytes=parse_size(memory_limit) if memory_limit else None,
                query_timeout_s=query_timeout,
                read_cache_bytes=parse_size(read_cache, allow_zero=True),
                max_running_queries=max_concurrent_queries or default_running_queries(),
                max_queued_queries=max_queued_queries,
            ),
        )
        config.validate()
        run_server(config)
    except (ConfigError, DemoDataError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command(context_settings={"ignore_unknown_options": False})
@click.pass_context
def coordinator(context: click.Context, **options: object) -> None:
    """Run the Flight SQL endpoint as a coordinator for executors started elsewhere
    (`krishiv executor --coordinator grpc://HOST:PORT`); takes the options of `serve`."""
    context.invoke(serve, distributed=True, **options)


coordinator.params = [p for p in serve.params]


@main.command()
@click.option("--host", envvar="KRISHIV_EXECUTOR_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="KRISHIV_EXECUTOR_PORT", default=50051, show_default=True,
              type=int)
@click.option("--work-dir", envvar="KRISHIV_EXECUTOR_WORK_DIR", default="executor-work",
              show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where this executor keeps shuffle files.")
@click.option("--coordinator", envvar="KRISHIV_COORDINATOR", default=None,
              help="The coordinator to register with, e.g. grpc://HOST:50050.")
@click.option("--warehouse", envvar="KRISHIV_WAREHOUSE", default="warehouse", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="The embedded catalog folder the coordinator uses.")
@click.option("--catalog-uri", envvar="KRISHIV_CATALOG_URI", default=None,
              help="The Iceberg REST catalog the coordinator uses.")
@click.option("--insecure", is_flag=True, help="Serve without KRISHIV_EXECUTOR_TASK_BEARER_TOKEN.")
@click.option("--local-shuffle-reads/--no-local-shuffle-reads",
              envvar="KRISHIV_LOCAL_SHUFFLE_READS", default=True, show_default=True,
              help="Read the shuffle files of executors on this machine in place, not over "
                   "Flight (and let them read this one's).")
@click.option("--fault", "faults", multiple=True, envvar="KRISHIV_FAULTS", hidden=True,
              help="Chaos tests only (needs KRISHIV_ENABLE_FAULT_INJECTION=1): "
                   "ACTION@POINT[:stage=S,partition=P,attempt=A,seconds=X].")
@click.option("--log-level", envvar="KRISHIV_LOG_LEVEL", default="INFO", show_default=True)
def executor(host: str, port: int, work_dir: Path, coordinator: str | None, warehouse: Path,
             catalog_uri: str | None, insecure: bool, local_shuffle_reads: bool,
             faults: tuple[str, ...], log_level: str) -> None:
    """Run an executor: serve shuffle data and, with --coordinator, run its tasks."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    token = environ().get("KRISHIV_EXECUTOR_TASK_BEARER_TOKEN", "").strip()
    if not token and not insecure:
        raise click.ClickException(
            "set KRISHIV_EXECUTOR_TASK_BEARER_TOKEN (or pass --insecure on every node)")
    try:
        injected = fault_config(faults, environ())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    work_dir.mkdir(parents=True, exist_ok=True)
    # A new executor has a new id: shuffle files of an earlier one here are orphans.
    for job in sweep_work_dir(work_dir, 0.0, time.time()):
        log.info("removed shuffle files of job %s left by an earlier executor", job)
    authenticator = Authenticator(AuthConfig(tokens=(token,) if token else (),
                                             executor_token=token or None))
    handler = ShuffleHandler(work_dir.resolve(), token or None, injected)
    service = FlightService(handler, lenient(authenticator.authenticate))
    try:
        server, bound = start_flight_server(service, host, port, TransportConfig())
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    engine = None
    if coordinator:
        config = ServerConfig(warehouse=warehouse, catalog_uri=catalog_uri)
        engine = SqlEngine(open_catalog(config), EngineConfig())
        handler.agent = ExecutorAgent(coordinator, token or None, f"grpc://{host}:{bound}",
                                      work_dir.resolve(), engine, faults=injected,
                                      local_reads=local_shuffle_reads)
        try:
            handler.agent.start()
        except Exception as exc:
            server.stop(0)
            engine.close()
            raise click.ClickException(f"cannot register with {coordinator}: "
                                       f"{' '.join(str(exc).split())[:200]}") from None
    print(f"krishiv: executor serving shuffle data on grpc://{host}:{bound}", flush=True)
    _wait_for_signal()
    if handler.agent is not None:
        handler.agent.close()
    server.stop(grace=5).wait()
    authenticator.close()
    if engine is not None:
        engine.close()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Signals may land on a gRPC thread; poll so the main thread notices them.
    while not stop.wait(0.5):
        pass
    log.info("shutting down")


def _properties(pairs: tuple[str, ...]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--catalog-property needs KEY=VALUE, got {pair!r}")
        result[key] = value
    return result


def open_catalog(config: ServerConfig) -> Catalog:
    if config.catalog_uri:
        return IcebergCatalog.rest(config.catalog_uri, dict(config.catalog_properties))
    return IcebergCatalog.embedded(str(config.warehouse))


def prepare_catalog(config: ServerConfig) -> Catalog:
    """The opened catalog with demo data and default namespace, or a one-line ConfigError."""
    where = config.catalog_uri or str(config.warehouse)
    try:
        catalog = open_catalog(config)
        if config.demo:
            load_tpch_demo(catalog, config.demo_scale, scratch=config.warehouse)
        if not catalog.namespace_exists(config.engine.default_schema):
            catalog.create_namespace(config.engine.default_schema)
    except (ConfigError, DemoDataError):
        raise
    except Exception as exc:  # any backend failure at startup: say which catalog and why
        log.debug("catalog startup failure", exc_info=True)
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(f"cannot use the catalog at {where}: {detail}") from None
    return catalog


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run a benchmark: `krishiv bench NAME [ARGS]` is `python -m bench NAME [ARGS]`
    (bench/README.md). The benchmarks are not installed: they run from a source checkout
    with its test tools (`make venv`, or `pip install '.[dev]'`), this install's own or
    the one the command is started in."""
    checkout = bench_checkout(Path(__file__).resolve().parents[1], Path.cwd())
    if checkout is None:
        raise click.ClickException(
            "the benchmarks run from a source checkout: git clone the project, run "
            "`make venv` there, then `.venv/bin/krishiv bench NAME` (or run `krishiv bench` "
            "inside the checkout)")
    paths = [str(checkout), environ().get("PYTHONPATH", "")]
    env = {**environ(), "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    sys.exit(subprocess.call([sys.executable, "-m", "bench", *args], env=env))


def bench_checkout(installed_from: Path, cwd: Path) -> Path | None:
    """The source checkout whose bench/ to run: the one this package is installed from
    (an editable install), else the working folder or the nearest folder above it that
    is a Krishiv checkout."""
    for folder in (installed_from, cwd, *cwd.parents):
        if (folder / "bench" / "__main__.py").is_file() and _is_krishiv_project(folder):
            return folder
    return None


def _is_krishiv_project(folder: Path) -> bool:
    try:
        with (folder / "pyproject.toml").open("rb") as project:
            return bool(tomllib.load(project).get("project", {}).get("name") == "krishiv")
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _with_executor_token(auth: AuthConfig, executors: int) -> AuthConfig:
    """The executor token from the environment; local executors get a fresh one if unset."""
    token = environ().get("KRISHIV_EXECUTOR_TASK_BEARER_TOKEN", "").strip()
    if not token and executors:
        token = secrets.token_urlsafe(32)
    return replace(auth, executor_token=token or None)


def _start_local_executors(config: ServerConfig, port: int) -> list[subprocess.Popen[bytes]]:
    env = {**environ(), "KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": config.auth.executor_token or ""}
    catalog = (["--catalog-uri", config.catalog_uri] if config.catalog_uri
               else ["--warehouse", str(config.warehouse)])
    return [
        subprocess.Popen(
            [sys.executable, "-m", "flight_server.cli", "executor", "--port", "0",
             "--coordinator", f"grpc://127.0.0.1:{port}", *catalog,
             "--work-dir", str(config.warehouse / "executors" / str(index))],
            env=env,
        )
        for index in range(config.executors)
    ]


def _read_cache_text(config: ServerConfig) -> str:
    if config.distributed:
        return "not used (queries run on executors)"
    size = config.engine.read_cache_bytes
    return f"up to {size / 2**20:g} MiB of plain table reads" if size else "off"


def run_server(config: ServerConfig) -> None:
    catalog = prepare_catalog(config)
    engine = SqlEngine(catalog, config.engine)
    authenticator = Authenticator(config.auth)
    settings = Settings(max_task_failures=config.task_retries,
                        heartbeat_timeout_s=config.heartbeat_timeout_s,
                        no_executor_grace_s=config.no_executor_grace_s)
    cluster = (CoordinatorService(config.auth.executor_token, settings, engine=engine,
                                  partitions=config.shuffle_partitions,
                                  broadcast_limit=config.broadcast_limit_bytes,
                                  direct_results=config.direct_results,
                                  validate_state=config.validate_state)
               if config.distributed else None)
    handler = FlightSqlHandler(engine, config.max_upload_bytes, cluster,
                               insecure_cluster=config.insecure)
    service = FlightService(handler, authenticator.authenticate)
    tls = (TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca)
           if config.tls_cert and config.tls_key else None)
    server, port = start_flight_server(service, config.host, config.port,
                                       TransportConfig(tls=tls))
    if not config.auth.enabled:
        where = "loopback only" if is_loopback(config.host) else "INSECURE, no auth"
        log.warning("no bearer tokens configured: serving without authentication (%s)", where)
    where = f"{config.scheme}://{config.host}:{port}"
    log.info("Krishiv Flight SQL listening on %s", where)
    log.info("read cache: %s", _read_cache_text(config))
    executors = _start_local_executors(config, port) if config.executors else []
    print(f"krishiv: serving Flight SQL on {where}", flush=True)
    _wait_for_signal()
    for process in executors:
        process.terminate()
    for process in executors:
        process.wait(timeout=15)
    if cluster is not None:
        cluster.close()
    server.stop(grace=5).wait()
    authenticator.close()
    engine.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
