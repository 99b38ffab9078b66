"""The Twilio back end over the official `twilio` library (Programmable Messaging, Messages resource).

Twilio's answers become `NotifierError`s here, at the boundary, so no caller sees a Twilio exception:
- 429, 5xx, 401/403 (credentials may be fixed later), timeouts and connection errors are retryable;
- other 4xx (21211/21614 invalid number, 21610 unsubscribed recipient, ...) are permanent.
A read timeout or a 5xx is *uncertain*: Twilio may have created the message anyway, so the next
attempt first looks it up (`find_sent`) instead of sending it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Set
from datetime import datetime
from typing import Any, Final

import requests
from twilio.base.exceptions import (  # type: ignore[import-untyped]
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]
from urllib3.exceptions import NewConnectionError

from alerts.notify.errors import NotifierError
from alerts.notify.notifier import OutgoingSms, SendReceipt
from rpmgw.errors import SettingsError
from rpmgw.settings import TwilioSettings

log = logging.getLogger(__name__)

# The library logs every request's query at INFO, and a Messages query carries the patient's number.
_http_log = logging.getLogger("alerts.notify.twilio_sms.http")
_http_log.setLevel(logging.WARNING)

# The library reads TWILIO_EDGE/TWILIO_REGION from os.environ unless given a non-empty mapping.
_NO_ENVIRONMENT: Final = {"TWILIO_EDGE": "", "TWILIO_REGION": ""}

# How many recent messages to one number `find_sent` reads (newest first).
LOOKUP_LIMIT: Final = 200


class TwilioNotifier:
    """Sends texts through Twilio; `public_url` (may be empty) is where Twilio posts status callbacks."""

    def __init__(
        self, settings: TwilioSettings, public_url: str, *, lookup_limit: int = LOOKUP_LIMIT
    ) -> None:
        if not settings.account_sid or not settings.auth_token:
            raise SettingsError("Twilio needs RPMGW_TWILIO__ACCOUNT_SID and RPMGW_TWILIO__AUTH_TOKEN")
        if not (settings.messaging_service_sid or settings.from_):
            raise SettingsError("Twilio needs RPMGW_TWILIO__FROM or RPMGW_TWILIO__MESSAGING_SERVICE_SID")
        self._settings = settings
        self._public_url = public_url.rstrip("/")
        self._lookup_limit = lookup_limit
        self._client = Client(
            settings.account_sid,
            settings.auth_token,
            http_client=TwilioHttpClient(timeout=settings.timeout, logger=_http_log),
            environment=_NO_ENVIRONMENT,
        )
        if settings.base_url:
            self._client.api.base_url = settings.base_url.rstrip("/")

    def status_callback_url(self, outbox_id: int) -> str | None:
        """Where Twilio reports this text's delivery: the outbox id lets a callback arrive before the SID is recorded."""
        if not self._public_url:
            return None
        return f"{self._public_url}/twilio/status?outbox_id={outbox_id}"

    def send(self, message: OutgoingSms) -> SendReceipt:
        """Create the message; a Messaging Service, when configured, is preferred over a From number."""
        options: dict[str, Any] = {"to": message.to, "body": message.body}
        if self._settings.messaging_service_sid:
            options["messaging_service_sid"] = self._settings.messaging_service_sid
        else:
            options["from_"] = self._settings.from_
        callback = self.status_callback_url(message.outbox_id)
        if callback:
            options["status_callback"] = callback
        try:
            created = self._client.messages.create(**options)
        except (TwilioException, requests.RequestException) as exc:
            raise _notifier_error(exc, f"Twilio refused outbox row {message.outbox_id}") from exc
        return SendReceipt(provider_id=str(created.sid), status=str(created.status or "queued"))

    def find_sent(
        self, to: str, body: str, since: datetime, exclude: Set[str] = frozenset()
    ) -> SendReceipt | None:
        """The oldest outgoing message to `to` with this exact body created at or after `since`.

        Not filtered by DateSent on Twilio's side: a message still queued has no DateSent yet, and
        Twilio's DateSent filter has day granularity anyway. Bodies are compared exactly, so this
        finds nothing if Twilio rewrote the text (Messaging Service "smart encoding").
        """
        try:
            messages = self._client.messages.list(to=to, limit=self._lookup_limit)
        except (TwilioException, requests.RequestException) as exc:
            raise _notifier_error(exc, "cannot list Twilio messages") from exc
        matches: list[tuple[datetime, str, str]] = []
        for message in messages:
            created = message.date_created or message.date_sent
            outgoing = str(message.direction or "outbound-api").startswith("outbound")
            if (
                outgoing
                and message.body == body
                and message.sid not in exclude
                and isinstance(created, datetime)
                and created >= since
            ):
                matches.append((created, str(message.sid), str(message.status or "queued")))
        if not matches:
            return None
        _, sid, status = min(matches)
        return SendReceipt(provider_id=sid, status=status)


def _notifier_error(exc: Exception, context: str) -> NotifierError:
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        return _http_error(int(exc.status), exc.code, _reason(exc), context)
    if isinstance(exc, requests.ConnectTimeout) or _refused(exc):
        return NotifierError(f"{context}: cannot connect to Twilio ({_first_line(exc)})", True, "connection")
    if isinstance(exc, requests.Timeout):
        return NotifierError(
            f"{context}: no answer from Twilio in time ({_first_line(exc)})", True, "timeout", uncertain=True
        )
    if isinstance(exc, requests.RequestException):
        return NotifierError(
            f"{context}: connection to Twilio failed ({_first_line(exc)})", True, "connection", uncertain=True
        )
    # A TwilioException without a status: an unreadable answer (a proxy's HTML page, a broken list page).
    return NotifierError(
        f"{context}: unexpected answer from Twilio ({_first_line(exc)})", True, None, uncertain=True
    )


def _http_error(status: int, code: object, reason: str, context: str) -> NotifierError:
    code_text = str(code) if code is not None else str(status)
    message = f"{context}: HTTP {status}, Twilio error {code_text}: {reason}"
    if status == 429 or status >= 500:
        return NotifierError(message, True, code_text, uncertain=status >= 500)
    if status in (401, 403):
        log.error(
            "Twilio refused our credentials: check RPMGW_TWILIO__ACCOUNT_SID and RPMGW_TWILIO__AUTH_TOKEN"
        )
        return NotifierError(message, True, code_text)
    return NotifierError(message, False, code_text)


def _reason(exc: TwilioRestException | TwilioServiceException) -> str:
    if isinstance(exc, TwilioServiceException):
        return str(exc.detail or exc.title)
    # The library prefixes its own "Unable to create record: " to Twilio's message.
    return str(exc.msg)


def _refused(exc: Exception) -> bool:
    # requests wraps urllib3's "could not open a connection" (refused, no route, DNS): nothing was sent.
    if not isinstance(exc, requests.ConnectionError):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
