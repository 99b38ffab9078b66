"""The one small protocol every SMS back end implements, and the choice of back end from the settings.

A back end only talks to its provider: the outbox, retries and the SMS rules live in `delivery.py`.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from rpmgw.settings import Settings


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    """One text to send: the outbox row's id (for the status callback), the recipient and the body."""

    outbox_id: int
    to: str
    body: str


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """The provider took the text: its id for the message (Twilio's SID) and its status then."""

    provider_id: str
    status: str


class Notifier(Protocol):
    """An SMS back end; failures raise `alerts.notify.errors.NotifierError` saying whether to retry."""

    def send(self, message: OutgoingSms) -> SendReceipt:
        """Hand `message` to the provider; raises `NotifierError` (retryable or not) when it refuses."""
        ...

    def find_sent(
        self, to: str, body: str, since: datetime, exclude: Set[str] = frozenset()
    ) -> SendReceipt | None:
        """The provider's record of a text to `to` with exactly `body` created at or after `since`.

        For crash recovery: a worker that died between sending and recording left the row in flight.
        Provider ids in `exclude` are already recorded for other rows and never match. None when the
        provider has no such text, or when the back end cannot tell (then the text is sent again).
        """
        ...


def build_notifier(settings: Settings) -> Notifier:
    """The back end chosen by RPMGW_SMS__BACKEND: "twilio", or "outbox" (development: record only)."""
    if settings.sms.backend == "twilio":
        from alerts.notify.twilio_sms import TwilioNotifier

        return TwilioNotifier(settings.twilio, settings.public_url)
    from alerts.notify.dev import OutboxOnlyNotifier

    return OutboxOnlyNotifier()
