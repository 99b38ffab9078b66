"""Twilio webhooks: delivery status callbacks and incoming replies (STOP/СТОП, START/СТАРТ).

Both endpoints accept only requests signed by Twilio (X-Twilio-Signature, HMAC-SHA1 with the account's
auth token over the URL Twilio called plus the form fields); anything else gets 403 and changes nothing.

The URL Twilio called is RPMGW_PUBLIC_URL + the request's path and query, when RPMGW_PUBLIC_URL is set:
that is the address Twilio was given, whatever proxies sit in between. Without it, the URL is rebuilt
from the request, honouring X-Forwarded-Proto and X-Forwarded-Host from a TLS-terminating proxy.

The application provides `app.config["RPMGW_SETTINGS"]` (rpmgw.settings.Settings) and
`app.extensions["rpmgw_sessions"]` (a sessionmaker), see `web.create_app`.
"""

from __future__ import annotations

import logging
from typing import Final

from flask import Blueprint, Response, abort, current_app, request
from sqlalchemy.orm import Session, sessionmaker
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from alerts.notify.outbox import opt_in, opt_out, record_provider_status
from alerts.notify.policy import Keyword, reply_keyword
from rpmgw.models import utcnow
from rpmgw.settings import Settings

log = logging.getLogger(__name__)

webhooks = Blueprint("twilio_webhooks", __name__, url_prefix="/twilio")

EMPTY_TWIML: Final = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def _settings() -> Settings:
    settings: Settings = current_app.config["RPMGW_SETTINGS"]
    return settings


def _sessions() -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = current_app.extensions["rpmgw_sessions"]
    return sessions


def called_url() -> str:
    """The full URL Twilio requested (what it signed), see the module docstring."""
    query = request.query_string.decode()
    path = request.path + (f"?{query}" if query else "")
    public_url = _settings().public_url.rstrip("/")
    if public_url:
        return public_url + path
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{proto}://{host}{request.script_root}{path}"


@webhooks.before_request
def _verify_signature() -> None:
    token = _settings().twilio.auth_token
    if not token:
        log.warning(
            "Twilio webhook refused: RPMGW_TWILIO__AUTH_TOKEN is not set, so no signature can be checked"
        )
        abort(403)
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature or not RequestValidator(token).validate(called_url(), request.form, signature):
        log.warning("Twilio webhook refused: bad or missing X-Twilio-Signature for %s", called_url())
        abort(403)


@webhooks.post("/status")
def status_callback() -> tuple[str, int]:
    """Record a text's delivery status (MessageSid, MessageStatus, ErrorCode)."""
    sid = request.form.get("MessageSid") or request.form.get("SmsSid")
    status = request.form.get("MessageStatus") or request.form.get("SmsStatus")
    if not sid or not status:
        abort(400)
    outbox_id = request.args.get("outbox_id", type=int)
    with _sessions().begin() as session:
        found = record_provider_status(
            session,
            provider_id=sid,
            provider_status=status.lower(),
            error_code=request.form.get("ErrorCode") or None,
            outbox_id=outbox_id,
        )
    if not found:
        # Not ours (or already gone): answering 200 stops Twilio from calling again.
        log.warning("status callback for unknown message %s (%s)", sid, status)
    return "", 200


@webhooks.post("/inbound")
def inbound() -> Response:
    """A reply from a phone: STOP/СТОП opts the number out of texts, START/СТАРТ back in."""
    phone = request.form.get("From", "")
    # Twilio's Advanced Opt-Out names the keyword it recognised; otherwise read the reply ourselves.
    opt_out_type = request.form.get("OptOutType", "").lower()
    keyword = (
        Keyword(opt_out_type)
        if opt_out_type in ("stop", "start")
        else reply_keyword(request.form.get("Body", ""))
    )
    if phone and keyword is not None:
        with _sessions().begin() as session:
            if keyword is Keyword.STOP:
                changed = opt_out(session, phone, source="reply", now=utcnow())
            else:
                changed = opt_in(session, phone)
        log.info("SMS %s from a patient's number%s", keyword.value.upper(), "" if changed else " (no change)")
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")
