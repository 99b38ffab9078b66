"""The development back end: texts are only recorded in the outbox, where the CLI and the web show them."""

from __future__ import annotations

import logging
from collections.abc import Set
from datetime import datetime

from alerts.notify.notifier import OutgoingSms, SendReceipt

log = logging.getLogger(__name__)


class OutboxOnlyNotifier:
    """Sends nothing: every text is "sent" at once with the provider id `dev-<outbox id>`."""

    def send(self, message: OutgoingSms) -> SendReceipt:
        """Accept the text; the body stays in the outbox row (not in the log: it is health data)."""
        log.info("SMS outbox row %d recorded only (RPMGW_SMS__BACKEND=outbox)", message.outbox_id)
        return SendReceipt(provider_id=f"dev-{message.outbox_id}", status="sent")

    def find_sent(
        self, to: str, body: str, since: datetime, exclude: Set[str] = frozenset()
    ) -> SendReceipt | None:
        """Nothing ever left this process, so "sending again" after a crash is harmless: None."""
        return None
