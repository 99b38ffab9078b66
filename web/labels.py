"""Names for people of the codes stored in the database (severities, reasons, states, flags...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from flask_babel import LazyString
from flask_babel import lazy_gettext as _l

SEVERITY: Final[Mapping[str, LazyString]] = {
    "critical": _l("critical"),
    "urgent": _l("urgent"),
    "routine": _l("routine"),
}
REASON: Final[Mapping[str, LazyString]] = {
    "contacted_patient": _l("Contacted the patient"),
    "medication_changed": _l("Medication changed"),
    "measurement_error": _l("Measurement error"),
    "emergency_services": _l("Emergency services called"),
    "no_action_needed": _l("No action needed"),
}
STATE: Final[Mapping[str, LazyString]] = {
    "open": _l("Open"),
    "unacknowledged": _l("Waiting for acknowledgement"),
    "in_care": _l("In care"),
    "closed": _l("Closed"),
    "all": _l("All"),
}
CONFIRMATION: Final[Mapping[str, LazyString]] = {
    "pending": _l("waiting for a repeat measurement"),
    "confirmed": _l("confirmed on repeat"),
    "not_confirmed": _l("not confirmed on repeat"),
    "no_repeat": _l("no repeat measurement"),
}
EVENT: Final[Mapping[str, LazyString]] = {
    "raised": _l("raised"),
    "reading_attached": _l("reading attached"),
    "upgraded": _l("upgraded"),
    "confirmed": _l("confirmed"),
    "not_confirmed": _l("not confirmed"),
    "no_repeat": _l("no repeat"),
    "cleared": _l("cleared"),
    "reactivated": _l("active again"),
    "remeasure": _l("re-measurement asked"),
    "notified": _l("notified"),
    "escalated": _l("escalated"),
    "acknowledged": _l("acknowledged"),
    "closed": _l("closed"),
}
FLAG: Final[Mapping[str, LazyString]] = {
    "irregular_pulse": _l("irregular pulse"),
    "movement": _l("movement"),
    "cuff_loose": _l("cuff loose"),
    "position_error": _l("position error"),
    "low_battery": _l("low battery"),
    "control_solution": _l("control solution"),
    "pulse_pressure": _l("implausible pulse pressure"),
}
MEAL: Final[Mapping[str, LazyString]] = {
    "fasting": _l("fasting"),
    "before_meal": _l("before meal"),
    "after_meal": _l("after meal"),
    "bedtime": _l("bedtime"),
    "random": _l("random"),
}
ROLE: Final[Mapping[str, LazyString]] = {
    "doctor": _l("doctor"),
    "nurse": _l("nurse"),
    "admin": _l("administrator"),
}
READING_TYPE: Final[Mapping[str, LazyString]] = {
    "blood_pressure": _l("Blood pressure"),
    "glucose": _l("Glucose"),
    "unknown": _l("unknown"),
}
TEXT_STATUS: Final[Mapping[str, LazyString]] = {
    "pending": _l("queued"),
    "deferred": _l("deferred (quiet hours)"),
    "in_flight": _l("sending"),
    "sent": _l("sent"),
    "delivered": _l("delivered"),
    "failed": _l("failed"),
    "suppressed": _l("not sent"),
}
OUTCOME: Final[Mapping[str, LazyString]] = {"ok": _l("ok"), "denied": _l("refused"), "failed": _l("failed")}


def label(table: Mapping[str, LazyString], code: str | None) -> str:
    """The name of `code` in the interface language; the code itself when it has none."""
    if code is None:
        return "—"
    found = table.get(code)
    return code if found is None else str(found)


ALL: Final = {
    "severity": SEVERITY,
    "reason": REASON,
    "state": STATE,
    "confirmation": CONFIRMATION,
    "event": EVENT,
    "flag": FLAG,
    "meal": MEAL,
    "role": ROLE,
    "reading_type": READING_TYPE,
    "text_status": TEXT_STATUS,
    "outcome": OUTCOME,
}
