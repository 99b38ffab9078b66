"""Time-driven rules, run by the worker: confirmation windows, no data, silent devices, escalation.

The gateway records, once per batch, when each patient last measured each reading type and when each
device was last heard from (`record_activity`); a reading also clears the no-data and device-silent
alerts it answers. The worker's `run_time_rules` looks at the clock: everything it does is idempotent
(outbox keys, compare-before-write under row locks), so two workers, or one run twice, do it once.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Insert, Table, bindparam, case, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alerts.lifecycle import escalate_due, expire_confirmation
from alerts.model import Confirmation, Family, RuleId, Severity
from alerts.notify.outbox import enqueue
from alerts.rules import confirmation_expired, device_silent, no_data_due
from alerts.tables import READING_TYPES, Alert, AlertEvent, PatientActivity, ReadingType
from alerts.thresholds import Thresholds
from rpmgw.models import Base, Device, Enrolment, Patient, UtcDateTime
from rpmgw.settings import AlertsSettings

log = logging.getLogger(__name__)

# (patient_id, reading type, measured_at, device_id), as the gateway has them for a stored batch.
Activity = tuple[str, str, datetime, str]
ThresholdsFor = Callable[[str], tuple[Thresholds, str]]

REMINDER_TEMPLATES: Final[Mapping[str, str]] = {
    "blood_pressure": "reminder_bp",
    "glucose": "reminder_glucose",
}
_TYPE_WORDS: Final[Mapping[str, str]] = {"blood_pressure": "blood pressure", "glucose": "glucose"}
_TIME_FAMILIES: Final = (Family.NO_DATA.value, Family.DEVICE_SILENT.value)
_CHUNK: Final = 500


@dataclass(frozen=True)
class TimeRuleReport:
    """What one run of the time rules did (all zero: nothing was due)."""

    confirmations_expired: int = 0
    reminders: int = 0
    no_data_opened: int = 0
    no_data_cleared: int = 0
    device_silent_opened: int = 0
    device_silent_cleared: int = 0
    escalations: int = 0

    @property
    def total(self) -> int:
        """How many things were done."""
        return sum(vars(self).values())


# --- activity (gateway) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActivityWrites:
    """What `record_activity` wrote: handed to `ActivityCache.remember` once the transaction commits."""

    measured: Mapping[tuple[str, str], datetime]  # (patient_id, type) -> last_measured_at written
    devices: frozenset[str]
    now: datetime


class ActivityCache:
    """What this process last wrote of each patient's activity and each device's last_seen_at.

    With it, `record_activity` skips a row written less than `refresh` ago whose reading is less than
    `refresh` newer than what this process wrote (the database keeps the newest of all writers, so it
    holds at least that). last_measured_at, last_received_at and devices.last_seen_at are then at most
    `refresh` behind (the time rules count in days); a patient's first reading of a type, and one after
    a longer gap, are written at once and so clear the no-data alerts they answer. Without it every
    batch rewrote the row of every patient in it (profiled: a quarter of the gateway's time in a
    backlog drain, a fifth under live load).
    Bounded: past `max_entries` it forgets everything, which only costs writes.
    """

    def __init__(self, *, refresh: timedelta = timedelta(seconds=60), max_entries: int = 200_000) -> None:
        self._refresh = refresh
        self._max_entries = max_entries
        self._measured: dict[tuple[str, str], tuple[datetime, datetime]] = {}  # -> (measured, written at)
        self._devices: dict[str, datetime] = {}  # -> written at

    def needs_write(self, key: tuple[str, str], measured_at: datetime, now: datetime) -> bool:
        """Whether the activity row `key` must be written for a reading measured at `measured_at`."""
        known = self._measured.get(key)
        return known is None or measured_at - known[0] >= self._refresh or now - known[1] >= self._refresh

    def device_needs_write(self, device_id: str, now: datetime) -> bool:
        """Whether the device's last_seen_at must be written."""
        written = self._devices.get(device_id)
        return written is None or now - written >= self._refresh

    def remember(self, writes: ActivityWrites) -> None:
        """Note committed writes (never call it for a transaction that rolled back)."""
        if len(self._measured) + len(writes.measured) > self._max_entries:
            self._measured.clear()
        if len(self._devices) + len(writes.devices) > self._max_entries:
            self._devices.clear()
        for key, measured_at in writes.measured.items():
            known = self._measured.get(key)
            self._measured[key] = (measured_at if known is None else max(measured_at, known[0]), writes.now)
        for device_id in writes.devices:
            self._devices[device_id] = writes.now


def record_activity(
    session: Session, readings: Sequence[Activity], now: datetime, *, cache: ActivityCache | None = None
) -> ActivityWrites:
    """Record a stored batch: newest measured_at per (patient, type), devices heard from now.

    One upsert for patient_activity and one UPDATE for devices (each executemany), whatever the batch size;
    both keep the newest value when two gateways write at once. The readings also clear the no-data
    alert of their type and the device-silent alert of their device. With a `cache`, rows that would
    change nothing are skipped (see `ActivityCache`); the caller remembers the returned writes after
    the commit.
    """
    newest: dict[tuple[str, str], datetime] = {}
    devices: set[str] = set()
    for patient_id, reading_type, measured_at, device_id in readings:
        devices.add(device_id)
        if reading_type not in READING_TYPES:
            continue
        key = (patient_id, reading_type)
        if key not in newest or measured_at > newest[key]:
            newest[key] = measured_at
    if cache is not None:
        newest = {key: m for key, m in newest.items() if cache.needs_write(key, m, now)}
        devices = {d for d in devices if cache.device_needs_write(d, now)}
    if newest:
        # Sorted: two gateways upserting overlapping rows take their locks in the same order.
        rows = [
            {"patient_id": p, "type": t, "last_measured_at": m, "last_received_at": now}
            for (p, t), m in sorted(newest.items())
        ]
        session.execute(_activity_upsert(session.get_bind().dialect.name), rows)
    if devices:
        table = _devices_table()
        seen = table.c.last_seen_at
        heard = literal(now, UtcDateTime())
        session.execute(
            update(table)
            .where(table.c.id == bindparam("device"))
            .values(last_seen_at=case((seen.is_(None), heard), (seen < heard, heard), else_=seen)),
            [{"device": d} for d in sorted(devices)],
        )
    device_patients = {
        patient: seen_devices & devices
        for patient, seen_devices in _device_patients(readings).items()
        if seen_devices & devices
    }
    _clear_answered(session, newest.keys(), device_patients, now)
    return ActivityWrites(newest, frozenset(devices), now)


def clear_no_data(session: Session, patient_id: str, reading_type: str, now: datetime) -> bool:
    """A reading of `reading_type` arrived: take it off the patient's no-data alert; True if it cleared."""
    return _clear_answered(session, [(patient_id, reading_type)], {}, now) > 0


@functools.cache
def _activity_upsert(dialect: str) -> Insert:
    """The upsert of one activity row, run with every row of a batch as parameters (executemany).

    One statement per dialect, compiled once: a multi-row VALUES built from the batch was compiled anew
    for every batch (profiled: a sixth of a draining gateway's main thread).
    """
    table = Base.metadata.tables[PatientActivity.__tablename__]
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=["patient_id", "type"], set_=_newest(pg.excluded, table.c)
        )
    if dialect == "sqlite":
        lite = sqlite.insert(table)
        return lite.on_conflict_do_update(
            index_elements=["patient_id", "type"], set_=_newest(lite.excluded, table.c)
        )
    raise NotImplementedError(f"time rules support SQLite and PostgreSQL, not {dialect}")


def _newest(excluded: Any, current: Any) -> dict[str, Any]:
    return {
        "last_measured_at": case(
            (excluded.last_measured_at > current.last_measured_at, excluded.last_measured_at),
            else_=current.last_measured_at,
        ),
        "last_received_at": case(
            (excluded.last_received_at > current.last_received_at, excluded.last_received_at),
            else_=current.last_received_at,
        ),
    }


def _devices_table() -> Table:
    return Base.metadata.tables["devices"]


def _device_patients(readings: Iterable[Activity]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for patient_id, _, _, device_id in readings:
        found[patient_id].add(device_id)
    return found


def _clear_answered(
    session: Session,
    types_seen: Iterable[tuple[str, str]],
    devices_seen: Mapping[str, set[str]],
    now: datetime,
) -> int:
    """Take what arrived off the open no-data / device-silent alerts; clear those left with nothing."""
    types_by_patient: dict[str, set[str]] = defaultdict(set)
    for patient_id, reading_type in types_seen:
        types_by_patient[patient_id].add(reading_type)
    patients = sorted(set(types_by_patient) | set(devices_seen))
    cleared = 0
    for chunk in _chunks(patients):
        alerts = session.scalars(
            select(Alert)
            .where(
                Alert.patient_id.in_(chunk),
                Alert.family.in_(_TIME_FAMILIES),
                Alert.closed_at.is_(None),
                Alert.cleared_at.is_(None),
            )
            .order_by(Alert.id)
            .with_for_update()
        ).all()
        for alert in alerts:
            answered = (
                types_by_patient.get(alert.patient_id, set())
                if alert.family == Family.NO_DATA.value
                else devices_seen.get(alert.patient_id, set())
            )
            missing = _subject(alert)
            if not missing & answered:
                continue
            left = missing - answered
            alert.subject = _subject_text(left)
            if left:
                _event(
                    session,
                    alert,
                    now,
                    "reading_attached",
                    f"arrived: {', '.join(sorted(missing & answered))}",
                )
                continue
            _clear(session, alert, now, f"arrived: {', '.join(sorted(missing))}")
            cleared += 1
    session.flush()
    return cleared


# --- the worker's run ----------------------------------------------------------------------------


def run_time_rules(
    session: Session,
    *,
    now: datetime,
    clinic: Thresholds,
    settings: AlertsSettings,
    thresholds_for: ThresholdsFor,
) -> TimeRuleReport:
    """Expire severe-BP confirmation windows, remind and alert on missing data, alert on silent
    devices, and escalate unacknowledged critical alerts, as of `now`.

    `thresholds_for(patient_id)` gives a patient's effective thresholds and their label (it starts
    from the clinic's, so `clinic` itself is not consulted); it is called only for patients with
    something possibly due (silent for at least a day, or a pending confirmation).
    """
    memo: dict[str, tuple[Thresholds, str]] = {}

    def patient_thresholds(patient_id: str) -> tuple[Thresholds, str]:
        if patient_id not in memo:
            memo[patient_id] = thresholds_for(patient_id)
        return memo[patient_id]

    expired = _expire_confirmations(session, now, patient_thresholds)
    reminders, nd_opened, nd_cleared = _no_data(session, now, patient_thresholds)
    ds_opened, ds_cleared = _silent_devices(session, now, patient_thresholds)
    escalations = escalate_due(session, now=now, settings=settings)
    return TimeRuleReport(
        confirmations_expired=expired,
        reminders=reminders,
        no_data_opened=nd_opened,
        no_data_cleared=nd_cleared,
        device_silent_opened=ds_opened,
        device_silent_cleared=ds_cleared,
        escalations=escalations,
    )


def _expire_confirmations(session: Session, now: datetime, thresholds: ThresholdsFor) -> int:
    pending = session.scalars(
        select(Alert)
        .where(Alert.confirmation == Confirmation.PENDING.value, Alert.closed_at.is_(None))
        .order_by(Alert.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    expired = 0
    for alert in pending:
        since = alert.confirmation_since or alert.first_measured_at or alert.opened_at
        if confirmation_expired(since, now, thresholds(alert.patient_id)[0]) and expire_confirmation(
            session, alert, now=now
        ):
            expired += 1
    session.flush()
    return expired


@dataclass(frozen=True, slots=True)
class _Due:
    patient_id: str
    subject: str  # reading type or device id
    detail: str


def _no_data(session: Session, now: datetime, thresholds: ThresholdsFor) -> tuple[int, int, int]:
    enrolled = session.execute(
        select(Enrolment.patient_id, Device.kind, func.min(Enrolment.valid_from))
        .join(Device, Device.id == Enrolment.device_id)
        .where(Enrolment.valid_to.is_(None), Enrolment.valid_from <= now, Device.kind.in_(READING_TYPES))
        .group_by(Enrolment.patient_id, Device.kind)
    ).all()
    last = {
        (a.patient_id, a.type): a.last_measured_at
        for a in session.scalars(select(PatientActivity).where(PatientActivity.type.in_(READING_TYPES)))
    }
    reminders = 0
    due: list[_Due] = []
    for patient_id, kind, enrolled_since in enrolled:
        reading_type: ReadingType = "blood_pressure" if kind == "blood_pressure" else "glucose"
        last_measured = last.get((patient_id, reading_type))
        gap_start = enrolled_since if last_measured is None else max(last_measured, enrolled_since)
        if (now - gap_start).days < 1:  # no threshold is shorter than a day: skip the lookup
            continue
        verdict = no_data_due(thresholds(patient_id)[0], reading_type, last_measured, enrolled_since, now)
        if verdict == "none":
            continue
        reminders += _remind(session, patient_id, reading_type, gap_start, now)
        if verdict == "alert":
            word = _TYPE_WORDS[reading_type]
            due.append(_Due(patient_id, reading_type, f"no {word} reading since {gap_start.isoformat()}"))
    opened, cleared = _reconcile(session, Family.NO_DATA, RuleId.NO_DATA, due, now, thresholds)
    return reminders, opened, cleared


def _remind(session: Session, patient_id: str, reading_type: str, gap_start: datetime, now: datetime) -> int:
    patient = session.get(Patient, patient_id)
    if patient is None:
        return 0
    sent = enqueue(
        session,
        # Once per gap: the gap is named by when it started.
        key=f"nodata:{patient_id}:{reading_type}:{gap_start.isoformat()}:reminder",
        recipient_kind="patient",
        phone=patient.phone,
        template=REMINDER_TEMPLATES[reading_type],
        language=patient.language,
        params={},
        critical=False,
        purpose="reminder",
        patient_id=patient_id,
        now=now,
    )
    return 1 if sent else 0


def _silent_devices(session: Session, now: datetime, thresholds: ThresholdsFor) -> tuple[int, int]:
    enrolled = session.execute(
        select(Enrolment.patient_id, Enrolment.device_id, Enrolment.valid_from, Device.last_seen_at)
        .join(Device, Device.id == Enrolment.device_id)
        .where(Enrolment.valid_to.is_(None), Enrolment.valid_from <= now)
    ).all()
    due: list[_Due] = []
    for patient_id, device_id, enrolled_since, last_seen in enrolled:
        since = enrolled_since if last_seen is None else max(last_seen, enrolled_since)
        if (now - since).days < 1:
            continue
        if device_silent(thresholds(patient_id)[0], last_seen, enrolled_since, now):
            due.append(_Due(patient_id, device_id, f"device {device_id} silent since {since.isoformat()}"))
    return _reconcile(session, Family.DEVICE_SILENT, RuleId.DEVICE_SILENT, due, now, thresholds)


def _reconcile(
    session: Session,
    family: Family,
    rule: RuleId,
    due: Sequence[_Due],
    now: datetime,
    thresholds: ThresholdsFor,
) -> tuple[int, int]:
    """Make the family's open alerts say exactly what is due: open, extend, re-activate or clear."""
    by_patient: dict[str, list[_Due]] = defaultdict(list)
    for item in due:
        by_patient[item.patient_id].append(item)
    existing = {
        a.patient_id: a
        for a in session.scalars(
            select(Alert)
            .where(Alert.family == family.value, Alert.closed_at.is_(None))
            .order_by(Alert.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    opened = cleared = 0
    for patient_id in sorted(by_patient):
        items = sorted(by_patient[patient_id], key=lambda i: i.subject)
        subjects = {i.subject for i in items}
        text = "; ".join(i.detail for i in items)
        alert = existing.get(patient_id)
        if alert is None:
            alert = _open_time_alert(session, family, rule, patient_id, subjects, text, now, thresholds)
            opened += 1 if alert is not None else 0
            continue
        if alert.cleared_at is not None:
            alert.cleared_at = None
            _event(session, alert, now, "reactivated", text)
        elif subjects != _subject(alert):
            _event(session, alert, now, "reading_attached", text)
        alert.subject = _subject_text(subjects)
        alert.last_value_text = text
    for patient_id, alert in existing.items():
        if patient_id not in by_patient and alert.cleared_at is None:
            _clear(session, alert, now, "nothing missing any more")
            cleared += 1
    session.flush()
    return opened, cleared


def _open_time_alert(
    session: Session,
    family: Family,
    rule: RuleId,
    patient_id: str,
    subjects: set[str],
    text: str,
    now: datetime,
    thresholds: ThresholdsFor,
) -> Alert | None:
    alert = Alert(
        patient_id=patient_id,
        family=family.value,
        rule=rule.value,
        severity=Severity.ROUTINE.value,
        opened_at=now,
        reading_count=0,
        worst_value_text=text,
        last_value_text=text,
        late=False,
        threshold_version=thresholds(patient_id)[1],
        subject=_subject_text(subjects),
        escalation_level=0,
    )
    try:
        with session.begin_nested():
            session.add(alert)
            session.flush()
    except IntegrityError:
        return None  # another worker opened it at the same moment
    _event(session, alert, now, "raised", text)
    return alert


def _clear(session: Session, alert: Alert, now: datetime, why: str) -> None:
    alert.cleared_at = now
    _event(session, alert, now, "cleared", why)
    if alert.acknowledged_at is not None:
        alert.closed_at = now
        _event(session, alert, now, "closed", "cleared and acknowledged")


def _event(session: Session, alert: Alert, now: datetime, kind: str, detail: str) -> None:
    session.add(AlertEvent(alert_id=alert.id, at=now, kind=kind, msg_id=None, detail=detail))


def _subject(alert: Alert) -> set[str]:
    return {part for part in (alert.subject or "").split(",") if part}


def _subject_text(subjects: Iterable[str]) -> str:
    return ",".join(sorted(subjects))


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
