"""A local Twilio-compatible SMS sink: accepts message creation, records when each request arrived.

Only what the twilio library needs for `messages.create` (201 with a message resource) and an empty
message listing (the worker's reconciliation); no authentication failures, no webhooks.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"


class SmsSink:
    """Serves on 127.0.0.1 (free port); `arrivals` maps each To number to the monotonic arrival times."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="sms-sink", daemon=True)

    @property
    def url(self) -> str:
        """Base URL for RPMGW_TWILIO__BASE_URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """RPMGW_* variables making a worker send through this sink."""
        return {
            "RPMGW_SMS__BACKEND": "twilio",
            "RPMGW_TWILIO__ACCOUNT_SID": ACCOUNT_SID,
            "RPMGW_TWILIO__AUTH_TOKEN": AUTH_TOKEN,
            "RPMGW_TWILIO__FROM": "+15005550006",
            "RPMGW_TWILIO__BASE_URL": self.url,
        }

    def first_arrival(self, to: str, after: float) -> float | None:
        """When the first text to `to` at or after `after` arrived (time.monotonic), if any."""
        with self._lock:
            later = [t for t in self.arrivals.get(to, []) if t >= after]
            return later[0] if later else None

    def start(self) -> SmsSink:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def _record(self, to: str) -> None:
        with self._lock:
            self.arrivals.setdefault(to, []).append(time.monotonic())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                to = form.get("To", "")
                sink._record(to)
                now = format_datetime(datetime.now(UTC), usegmt=True)
                sid = "SM" + secrets.token_hex(16)
                self._reply(
                    201,
                    {
                        "account_sid": ACCOUNT_SID,
                        "api_version": "2010-04-01",
                        "body": form.get("Body", ""),
                        "date_created": now,
                        "date_sent": None,
                        "date_updated": now,
                        "direction": "outbound-api",
                        "error_code": None,
                        "error_message": None,
                        "from": form.get("From"),
                        "messaging_service_sid": form.get("MessagingServiceSid"),
                        "num_media": "0",
                        "num_segments": "1",
                        "price": None,
                        "price_unit": "USD",
                        "sid": sid,
                        "status": "queued",
                        "subresource_uris": {},
                        "to": to,
                        "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
                    },
                )

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                self._reply(
                    200,
                    {
                        "messages": [],
                        "end": 0,
                        "first_page_uri": path,
                        "next_page_uri": None,
                        "page": 0,
                        "page_size": 50,
                        "previous_page_uri": None,
                        "start": 0,
                        "uri": path,
                    },
                )

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler
