"""/healthz, /readyz and /metrics of a long-running process, on a small HTTP server thread.

/healthz answers 200 while the process runs (liveness). /readyz runs the process's readiness checks
(broker connected, InfluxDB answering, database reachable) and answers 200 when all pass, else 503 with
what failed. /metrics is prometheus-client's text format of the default registry.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from sqlalchemy import Engine

log = logging.getLogger(__name__)

# A check returns None when the dependency is fine and raises (any error) with the reason otherwise.
Check = Callable[[], None]


class NotReady(RuntimeError):
    """A readiness check found its dependency unavailable."""


def readiness(checks: Mapping[str, Check]) -> tuple[bool, dict[str, str]]:
    """Run every check; (all passed, {name: "ok" or the reason})."""
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            check()
        # A check's failure of any kind means "not ready"; the reason goes into the answer and the log.
        except Exception as exc:
            results[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        else:
            results[name] = "ok"
    return all(value == "ok" for value in results.values()), results


def influx_check(url: str, timeout: float = 2.0) -> Check:
    """InfluxDB (1.x or 2.x) answers its /ping."""

    def check() -> None:
        response = requests.get(f"{url.rstrip('/')}/ping", timeout=timeout)
        if response.status_code != 204:
            raise NotReady(f"InfluxDB /ping answered {response.status_code}")

    return check


def database_check(engine: Engine) -> Check:
    """The relational database answers `SELECT 1`.

    Asked on a plain DB-API connection: through SQLAlchemy it would begin a transaction, which on SQLite
    takes the write lock (BEGIN IMMEDIATE, see rpmgw.db) and so waited behind the gateway's own batch
    (a readiness probe timed out under load).
    """

    def check() -> None:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
        finally:
            connection.close()

    return check


def flag_check(is_set: Callable[[], bool], reason: str) -> Check:
    """Ready while `is_set()` is true (e.g. the MQTT connection)."""

    def check() -> None:
        if not is_set():
            raise NotReady(reason)

    return check


class HealthServer:
    """Serves the three endpoints on host:port (port 0: a free one) in a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        checks: Mapping[str, Check],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._checks = dict(checks)
        self._registry = registry
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        """Start serving; returns self."""
        self._thread.start()
        log.info("health and metrics on port %d (/healthz /readyz /metrics)", self.port)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, "application/json", b'{"status": "ok"}')
                elif path == "/readyz":
                    ready, results = readiness(owner._checks)
                    body = json.dumps({"status": "ready" if ready else "not ready", "checks": results})
                    self._send(200 if ready else 503, "application/json", body.encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(owner._registry))
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Scrapes and probes every few seconds would drown the process's own log.
                return

        return Handler
