"""A read-only Iceberg REST catalog on 127.0.0.1, serving a real pyiceberg SqlCatalog.

No Iceberg REST server is installable here, so the tests serve the spec's read endpoints
(config, namespaces, tables, load table) from an embedded catalog's own metadata files.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError


class RestCatalogServer:
    def __init__(self, backend: Catalog) -> None:
        self.backend = backend
        handler = type("Handler", (_Handler,), {"backend": backend})
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> RestCatalogServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


class _Handler(BaseHTTPRequestHandler):
    backend: Catalog

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, status: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, kind: str, message: str) -> None:
        self._reply(404, {"error": {"message": message, "type": kind, "code": 404}})

    def do_GET(self) -> None:
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        try:
            self._route(parts)
        except NoSuchNamespaceError as exc:
            self._not_found("NoSuchNamespaceException", str(exc))
        except NoSuchTableError as exc:
            self._not_found("NoSuchTableException", str(exc))

    def _route(self, parts: list[str]) -> None:
        match parts:
            case ["v1", "config"]:
                self._reply(200, {"defaults": {}, "overrides": {}})
            case ["v1", "namespaces"]:
                namespaces = [list(ns) for ns in self.backend.list_namespaces()]
                self._reply(200, {"namespaces": namespaces})
            case ["v1", "namespaces", ns]:
                properties = self.backend.load_namespace_properties(ns)
                self._reply(200, {"namespace": [ns], "properties": dict(properties)})
            case ["v1", "namespaces", ns, "tables"]:
                identifiers = [{"namespace": [ns], "name": ident[-1]}
                               for ident in self.backend.list_tables(ns)]
                self._reply(200, {"identifiers": identifiers})
            case ["v1", "namespaces", ns, "tables", name]:
                table = self.backend.load_table((ns, name))
                location = table.metadata_location
                metadata = json.loads(Path(urlparse(location).path).read_text())
                self._reply(200, {"metadata-location": location, "metadata": metadata,
                                  "config": {}})
            case _:
                self._not_found("NotFoundException", f"no route for {self.path}")
