"""`FakeTwilio`: a local HTTP server speaking the part of Twilio's REST API that rpmgw uses.

    with FakeTwilio() as fake:
        settings = fake.settings(from_="+15005550006")   # TwilioSettings with base_url = fake.url
        ...  # send through the real `twilio` library
        assert fake.created[0].form["Body"] == "..."

Speaks `POST /2010-04-01/Accounts/{sid}/Messages.json` (To, From or MessagingServiceSid, Body,
StatusCallback -> 201 with a message resource, status "queued"), `GET .../Messages.json` (To, From,
DateSent, DateSent<, DateSent> filters; Page/PageSize/PageToken paging with the fields the library
reads) and `GET .../Messages/{sid}.json`. Basic auth is checked (401, Twilio error 20003).
Every request is recorded (`requests`, thread-safe). Failures are programmed with `fail_next`:
a queue of `FakeResponse`s answered instead of the normal answer (429, 500, 400 with code 21211,
or an answer delayed past the client's timeout, optionally creating the message anyway, as happens
when the request reached Twilio but the answer never came back).
It can also play Twilio's webhooks: `status_callback(sid, "delivered")` and `inbound(url, from_, body)`
post signed form requests like Twilio's, for the web application's endpoints.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from requests import Response
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from rpmgw.settings import TwilioSettings

API_VERSION: Final = "2010-04-01"
DEFAULT_ACCOUNT_SID: Final = "AC" + "1" * 32
DEFAULT_AUTH_TOKEN: Final = "fake-auth-token-0123456789abcdef"


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The X-Twilio-Signature Twilio would send for a form POST of `params` to `url`."""
    signature: str = RequestValidator(auth_token).compute_signature(url, dict(params))
    return signature


def _error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass(frozen=True)
class FakeResponse:
    """An answer to give instead of the normal one, to the next request with `method`.

    `delay`: seconds to wait before answering (longer than the client's timeout = a timeout).
    `create`: store the message anyway, as when Twilio accepted it but the answer was lost.
    """

    status: int
    body: dict[str, Any] | None = None
    delay: float = 0.0
    create: bool = False
    method: str = "POST"

    @classmethod
    def error(cls, status: int, code: int, message: str, *, method: str = "POST") -> FakeResponse:
        """A Twilio error answer with its JSON body."""
        return cls(status, _error_body(status, code, message), method=method)

    @classmethod
    def rate_limited(cls) -> FakeResponse:
        """429 Too Many Requests (Twilio error 20429)."""
        return cls.error(429, 20429, "Too Many Requests")

    @classmethod
    def server_error(cls, status: int = 500) -> FakeResponse:
        """A 5xx from Twilio (error 20500)."""
        return cls.error(status, 20500, "An internal server error has occurred")

    @classmethod
    def invalid_number(cls, to: str = "") -> FakeResponse:
        """400 with code 21211: the To number is not a valid phone number."""
        return cls.error(400, 21211, f"The 'To' number {to or 'given'} is not a valid phone number.")

    @classmethod
    def unsubscribed(cls) -> FakeResponse:
        """400 with code 21610: the recipient replied STOP to this sender."""
        return cls.error(400, 21610, "Attempt to send to unsubscribed recipient")

    @classmethod
    def slow(cls, seconds: float, *, create: bool = True, status: int = 201) -> FakeResponse:
        """Answer only after `seconds`; by default the message is created meanwhile."""
        return cls(status, None, delay=seconds, create=create)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    auth: tuple[str, str] | None
    received_at: datetime

    @property
    def is_create(self) -> bool:
        """A POST creating a message."""
        return self.method == "POST" and self.path.endswith("/Messages.json")


@dataclass
class _Message:
    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status: str
    status_callback: str | None
    date_created: datetime
    date_sent: datetime | None = None
    date_updated: datetime | None = None
    error_code: int | None = None
    seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class FakeTwilio:
    """A threaded HTTP server on a free 127.0.0.1 port; start/stop it as a context manager."""

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        *,
        clock: Callable[[], datetime] | None = None,
        auto_send: bool = True,
    ) -> None:
        """`auto_send`: a created message is at once "sent" (with DateSent) in listings, as Twilio does
        within a second; False keeps it "queued" without DateSent, as right after creation."""
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.clock = clock or (lambda: datetime.now(UTC))
        self.auto_send = auto_send
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._messages: list[_Message] = []
        self._faults: list[FakeResponse] = []
        self._seq = itertools.count(1)
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeTwilio:
        """Listen on a free port and serve in a background thread."""
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-twilio", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (delayed answers are cut short)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give the library (`client.api.base_url`)."""
        assert self._server is not None, "FakeTwilio is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def settings(
        self,
        *,
        from_: str | None = "+15005550006",
        messaging_service_sid: str | None = None,
        timeout: float = 10.0,
    ) -> TwilioSettings:
        """TwilioSettings pointing at this fake."""
        return TwilioSettings(
            account_sid=self.account_sid,
            auth_token=self.auth_token,
            from_=from_,
            messaging_service_sid=messaging_service_sid,
            base_url=self.url,
            timeout=timeout,
        )

    def env(self, *, from_: str = "+15005550006") -> dict[str, str]:
        """RPMGW_* variables making an rpmgw process send through this fake."""
        return {
            "RPMGW_SMS__BACKEND": "twilio",
            "RPMGW_TWILIO__ACCOUNT_SID": self.account_sid,
            "RPMGW_TWILIO__AUTH_TOKEN": self.auth_token,
            "RPMGW_TWILIO__FROM": from_,
            "RPMGW_TWILIO__BASE_URL": self.url,
        }

    # -- programming and inspection ----------------------------------------------------------------

    def fail_next(self, *responses: FakeResponse) -> None:
        """Answer the next requests (of each response's method) with these, in order."""
        with self._lock:
            self._faults.extend(responses)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def created(self) -> list[RecordedRequest]:
        """The message-creating POSTs received so far, whatever was answered."""
        return [r for r in self.requests if r.is_create]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The stored messages as Twilio would show them, oldest first."""
        with self._lock:
            return [self._resource(m) for m in self._messages]

    def set_status(self, sid: str, status: str, error_code: int | None = None) -> None:
        """Change a stored message's status (what a later listing or fetch shows)."""
        with self._lock:
            message = self._find(sid)
            message.status = status
            message.error_code = error_code
            message.date_updated = self.clock()

    def status_callback(self, sid: str, status: str, error_code: int | None = None) -> Response:
        """Post a signed delivery status callback for message `sid` to its StatusCallback URL."""
        with self._lock:
            message = self._find(sid)
            url = message.status_callback
        if not url:
            raise AssertionError(f"message {sid} was created without a StatusCallback")
        self.set_status(sid, status, error_code)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "To": message.to,
            "From": message.from_ or "+15005550006",
        }
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return self.post_signed(url, params)

    def inbound(self, url: str, from_: str, body: str, to: str = "+15005550006") -> Response:
        """Post a signed incoming-message webhook (a reply such as STOP) to `url`."""
        sid = "SM" + secrets.token_hex(16)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": "1",
        }
        return self.post_signed(url, params)

    def post_signed(self, url: str, params: Mapping[str, str]) -> Response:
        """POST `params` as a form to `url`, signed with this account's auth token as Twilio signs."""
        return requests.post(
            url,
            data=dict(params),
            headers={"X-Twilio-Signature": twilio_signature(self.auth_token, url, params)},
            timeout=10,
        )

    # -- the API -----------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> FakeResponse | None:
        with self._lock:
            self._requests.append(request)
            for index, fault in enumerate(self._faults):
                if fault.method == request.method:
                    return self._faults.pop(index)
        return None

    def _find(self, sid: str) -> _Message:
        for message in self._messages:
            if message.sid == sid:
                return message
        raise KeyError(f"no message {sid}")

    def _create(self, form: Mapping[str, str]) -> _Message:
        now = self.clock()
        message = _Message(
            sid="SM" + secrets.token_hex(16),
            to=form.get("To", ""),
            from_=form.get("From"),
            messaging_service_sid=form.get("MessagingServiceSid"),
            body=form.get("Body", ""),
            status="queued",
            status_callback=form.get("StatusCallback"),
            date_created=now,
            date_updated=now,
            seq=next(self._seq),
        )
        with self._lock:
            self._messages.append(message)
        return message

    def _resource(self, message: _Message, *, as_created: bool = False) -> dict[str, Any]:
        sent = not as_created and self.auto_send and message.status == "queued"
        status = "sent" if sent else message.status
        date_sent = message.date_sent or (
            message.date_created if sent or status not in ("queued", "accepted") else None
        )
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{message.sid}"
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": message.body,
            "date_created": _rfc2822(message.date_created),
            "date_sent": _rfc2822(date_sent),
            "date_updated": _rfc2822(message.date_updated),
            "direction": "outbound-api",
            "error_code": message.error_code,
            "error_message": None,
            "from": message.from_,
            "messaging_service_sid": message.messaging_service_sid,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": message.sid,
            "status": status,
            "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
            "to": message.to,
            "uri": f"{base}.json",
        }

    def _list(self, query: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            found = [m for m in self._messages if _matches(m, query, self._resource(m))]
        found.sort(key=lambda m: (m.date_created, m.seq), reverse=True)
        page_size = min(int(query.get("PageSize", "50")), 1000)
        page = int(query.get("Page", "0"))
        chunk = found[page * page_size : (page + 1) * page_size]
        path = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def page_uri(number: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': page_size, 'Page': number})}"

        more = (page + 1) * page_size < len(found)
        return {
            "messages": [self._resource(m) for m in chunk],
            "end": page * page_size + max(len(chunk) - 1, 0),
            "first_page_uri": page_uri(0),
            "next_page_uri": f"{page_uri(page + 1)}&PageToken=PA{chunk[-1].sid}" if more else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": page * page_size,
            "uri": page_uri(page),
        }

    def _answer(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length).decode() if length else ""
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        auth = _basic_auth(handler.headers.get("Authorization"))
        recorded = RecordedRequest(
            method=method,
            path=split.path,
            query=query,
            form=form,
            headers={k: v for k, v in handler.headers.items()},
            auth=auth,
            received_at=datetime.now(UTC),
        )
        fault = self._record(recorded)
        prefix = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages"
        if auth != (self.account_sid, self.auth_token) or not split.path.startswith(prefix):
            handler.reply(401, _error_body(401, 20003, "Authenticate"))
            return
        if fault is not None:
            created = self._create(form) if fault.create and method == "POST" else None
            if fault.delay and self._stopping.wait(fault.delay):
                return
            body = fault.body
            if body is None:
                body = self._resource(created, as_created=True) if created is not None else {}
            handler.reply(fault.status, body)
            return
        rest = split.path[len(prefix) :]
        if method == "POST" and rest == ".json":
            missing = [name for name in ("To", "Body") if not form.get(name)]
            if not (form.get("From") or form.get("MessagingServiceSid")):
                missing.append("From")
            if missing:
                handler.reply(400, _error_body(400, 21604, f"A '{missing[0]}' parameter is required."))
                return
            handler.reply(201, self._resource(self._create(form), as_created=True))
        elif method == "GET" and rest == ".json":
            handler.reply(200, self._list(query))
        elif method == "GET" and rest.startswith("/") and rest.endswith(".json"):
            with self._lock:
                try:
                    message = self._find(rest[1 : -len(".json")])
                except KeyError:
                    handler.reply(404, _error_body(404, 20404, "The requested resource was not found"))
                    return
            handler.reply(200, self._resource(message))
        else:
            handler.reply(404, _error_body(404, 20404, "The requested resource was not found"))


def _rfc2822(value: datetime | None) -> str | None:
    return format_datetime(value.astimezone(UTC)) if value is not None else None


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[len("Basic ") :]).decode().partition(":")
    return user, password


def _when(text: str) -> datetime:
    """A DateSent filter value: YYYY-MM-DD (midnight UTC) or an ISO 8601 date-time."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _matches(message: _Message, query: Mapping[str, str], resource: Mapping[str, Any]) -> bool:
    if "To" in query and message.to != query["To"]:
        return False
    if "From" in query and message.from_ != query["From"]:
        return False
    date_filters = [(k, v) for k, v in query.items() if k.startswith("DateSent")]
    if not date_filters:
        return True
    # Like Twilio: a message without DateSent (still queued) never matches a DateSent filter.
    if resource["date_sent"] is None:
        return False
    sent = message.date_sent or message.date_created
    for key, value in date_filters:
        bound = _when(value)
        if key == "DateSent>" and sent < bound:
            return False
        if key == "DateSent<" and sent > bound:
            return False
        if key == "DateSent" and sent.date() != bound.date():
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeTwilio
    server_version = "FakeTwilio/1.0"

    def do_GET(self) -> None:
        self._guarded("GET")

    def do_POST(self) -> None:
        self._guarded("POST")

    def _guarded(self, method: str) -> None:
        # A client that timed out has hung up: writing the late answer fails, which is expected.
        with suppress(BrokenPipeError, ConnectionResetError):
            self.fake._answer(self, method)

    def reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test's own assertions say what happened."""
