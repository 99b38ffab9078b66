"""Relational models of the alert lifecycle, the staff and care teams, and per-patient thresholds.

Migration 0002 creates these tables; `rpmgw/migrations/env.py` imports this module so that Alembic
sees the complete metadata. Timestamps are aware UTC (`UtcDateTime`), as everywhere in rpmgw.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from rpmgw.models import LANGUAGES, Base, BigId, UtcDateTime, utcnow

StaffRole = Literal["doctor", "nurse", "admin"]
STAFF_ROLES: Final[tuple[StaffRole, ...]] = ("doctor", "nurse", "admin")
ReadingType = Literal["blood_pressure", "glucose"]
READING_TYPES: Final[tuple[ReadingType, ...]] = ("blood_pressure", "glucose")
SEVERITIES: Final = ("critical", "urgent", "routine")
CONFIRMATIONS: Final = ("pending", "confirmed", "not_confirmed", "no_repeat")
EVENT_KINDS: Final = (
    "raised",
    "reading_attached",
    "upgraded",
    "confirmed",
    "not_confirmed",
    "no_repeat",
    "cleared",
    "reactivated",
    "remeasure",
    "notified",
    "escalated",
    "acknowledged",
    "closed",
)
REASON_CODES: Final = (
    "contacted_patient",
    "medication_changed",
    "measurement_error",
    "emergency_services",
    "no_action_needed",
)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Staff(Base):
    """A doctor, nurse or administrator of the clinic; `username` is how people and the CLI name them."""

    __tablename__ = "staff"
    __table_args__ = (
        CheckConstraint(f"role IN ({_in(STAFF_ROLES)})", name="role"),
        CheckConstraint(f"language IN ({_in(LANGUAGES)})", name="language"),
        CheckConstraint("length(phone) BETWEEN 9 AND 16", name="phone_length"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(8))
    language: Mapped[str] = mapped_column(String(2), default="ru")
    active: Mapped[bool] = mapped_column(Boolean(), default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"Staff(username={self.username!r}, role={self.role!r}, active={self.active!r})"


class CareTeam(Base):
    """A group of staff who look after a set of patients; one member may be the responsible doctor."""

    __tablename__ = "care_teams"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"CareTeam(id={self.id!r}, name={self.name!r})"


class CareTeamMember(Base):
    """A staff member's place in a care team."""

    __tablename__ = "care_team_members"
    __table_args__ = (
        # At most one responsible member per team, enforced by the database itself.
        Index(
            "uq_care_team_members_responsible",
            "team_id",
            unique=True,
            sqlite_where=text("responsible = 1"),
            postgresql_where=text("responsible"),
        ),
    )

    team_id: Mapped[int] = mapped_column(BigId, ForeignKey("care_teams.id"), primary_key=True)
    staff_id: Mapped[int] = mapped_column(BigId, ForeignKey("staff.id"), primary_key=True, index=True)
    responsible: Mapped[bool] = mapped_column(Boolean(), default=False)

    def __repr__(self) -> str:
        return (
            f"CareTeamMember(team_id={self.team_id!r}, staff_id={self.staff_id!r}, "
            f"responsible={self.responsible!r})"
        )


class OncallShift(Base):
    """A staff member is on call during [starts_at, ends_at)."""

    __tablename__ = "oncall_shifts"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="interval"),
        Index("ix_oncall_shifts_starts_at_ends_at", "starts_at", "ends_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    staff_id: Mapped[int] = mapped_column(BigId, ForeignKey("staff.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return (
            f"OncallShift(staff_id={self.staff_id!r}, starts_at={self.starts_at!r}, ends_at={self.ends_at!r})"
        )


class ThresholdVersion(Base):
    """One version of a patient's threshold overrides: the full set, never a diff; the newest applies."""

    __tablename__ = "threshold_versions"
    __table_args__ = (
        CheckConstraint("version >= 1", name="version_positive"),
        CheckConstraint("length(trim(reason)) > 0", name="reason_present"),
        Index("uq_threshold_versions_patient_id_version", "patient_id", "version", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), ForeignKey("patients.id"))
    version: Mapped[int] = mapped_column(Integer())
    overrides: Mapped[str] = mapped_column(Text())  # JSON object {field: number}
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    reason: Mapped[str] = mapped_column(Text())

    def __repr__(self) -> str:
        return f"ThresholdVersion(patient_id={self.patient_id!r}, version={self.version!r})"


class PatientActivity(Base):
    """When a patient last measured (and we last received) a reading of each type: for the no-data rule."""

    __tablename__ = "patient_activity"
    __table_args__ = (CheckConstraint(f"type IN ({_in(READING_TYPES)})", name="type"),)

    patient_id: Mapped[str] = mapped_column(String(64), ForeignKey("patients.id"), primary_key=True)
    type: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_measured_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime())

    def __repr__(self) -> str:
        return (
            f"PatientActivity(patient_id={self.patient_id!r}, type={self.type!r}, "
            f"last_measured_at={self.last_measured_at!r})"
        )


class Alert(Base):
    """One alert episode of a patient and rule family.

    Two axes: active/cleared (`cleared_at`) x unacknowledged/acknowledged (`acknowledged_at`); the
    alert is closed (`closed_at`) once it is both cleared and acknowledged. At most one alert per
    (patient, family) is not closed: a partial unique index guarantees it.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(f"severity IN ({_in(SEVERITIES)})", name="severity"),
        CheckConstraint(
            f"confirmation IS NULL OR confirmation IN ({_in(CONFIRMATIONS)})", name="confirmation"
        ),
        CheckConstraint("escalation_level BETWEEN 0 AND 2", name="escalation_level"),
        CheckConstraint("reading_count >= 0", name="reading_count"),
        Index(
            "uq_alerts_open_patient_family",
            "patient_id",
            "family",
            unique=True,
            sqlite_where=text("closed_at IS NULL"),
            postgresql_where=text("closed_at IS NULL"),
        ),
        Index("ix_alerts_patient_id_opened_at", "patient_id", "opened_at"),
        Index("ix_alerts_next_escalation_at", "next_escalation_at"),
        Index("ix_alerts_closed_at", "closed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), ForeignKey("patients.id"))
    family: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(8))
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    first_measured_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_measured_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reading_count: Mapped[int] = mapped_column(Integer(), default=0)
    worst_value_text: Mapped[str] = mapped_column(Text(), default="")
    worst_key: Mapped[float | None] = mapped_column(Float())
    last_value_text: Mapped[str] = mapped_column(Text(), default="")
    confirmation: Mapped[str | None] = mapped_column(String(16))
    # When the severe-BP confirmation window started: the measured_at of the reading that set `pending`.
    confirmation_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    late: Mapped[bool] = mapped_column(Boolean(), default=False)
    threshold_version: Mapped[str] = mapped_column(String(120), default="clinic")
    # Time rules only: what is missing (reading types for no_data, device ids for device_silent).
    subject: Mapped[str | None] = mapped_column(Text())
    cleared_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    escalation_level: Mapped[int] = mapped_column(Integer(), default=0)
    next_escalation_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    @property
    def active(self) -> bool:
        """True while the condition has not returned to normal."""
        return self.cleared_at is None

    @property
    def acknowledged(self) -> bool:
        """True once a person acknowledged it."""
        return self.acknowledged_at is not None

    @property
    def state(self) -> str:
        """Both axes in words, e.g. "active, unacknowledged"; "closed" once cleared and acknowledged."""
        if self.closed_at is not None:
            return "closed"
        activity = "active" if self.active else "cleared"
        ack = "acknowledged" if self.acknowledged else "unacknowledged"
        return f"{activity}, {ack}"

    def __repr__(self) -> str:
        return (
            f"Alert(id={self.id!r}, patient_id={self.patient_id!r}, rule={self.rule!r}, "
            f"severity={self.severity!r}, state={self.state!r})"
        )


class AlertEvent(Base):
    """Something that happened to an alert; the history a doctor reads and an auditor trusts."""

    __tablename__ = "alert_events"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_in(EVENT_KINDS)})", name="kind"),
        # Re-applying a reading already recorded on the alert is a no-op, even from two processes.
        Index(
            "uq_alert_events_alert_id_kind_msg_id",
            "alert_id",
            "kind",
            "msg_id",
            unique=True,
            sqlite_where=text("msg_id IS NOT NULL"),
            postgresql_where=text("msg_id IS NOT NULL"),
        ),
        Index("ix_alert_events_alert_id_at", "alert_id", "at"),
        Index("ix_alert_events_msg_id", "msg_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(BigId, ForeignKey("alerts.id"))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(20))
    msg_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text(), default="")

    def __repr__(self) -> str:
        return f"AlertEvent(alert_id={self.alert_id!r}, kind={self.kind!r}, msg_id={self.msg_id!r})"


class Acknowledgement(Base):
    """Who acknowledged an alert, when, and what was done: one per alert episode."""

    __tablename__ = "acknowledgements"
    __table_args__ = (
        CheckConstraint(f"reason_code IN ({_in(REASON_CODES)})", name="reason_code"),
        CheckConstraint("length(trim(note)) > 0", name="note_present"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(BigId, ForeignKey("alerts.id"), unique=True)
    staff_id: Mapped[int] = mapped_column(BigId, ForeignKey("staff.id"), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    reason_code: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text())
    time_to_ack_seconds: Mapped[int] = mapped_column(Integer())

    def __repr__(self) -> str:
        return (
            f"Acknowledgement(alert_id={self.alert_id!r}, staff_id={self.staff_id!r}, "
            f"reason_code={self.reason_code!r})"
        )
