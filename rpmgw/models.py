"""Relational models: patients, devices, enrolments (device <-> patient over time) and the quarantine.

Every timestamp is stored and returned as a timezone-aware UTC datetime (see `UtcDateTime`).
New tables for later features subclass `Base`; constraint names come from `NAMING_CONVENTION`, so
Alembic migrations can refer to them by a stable name on both SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PATIENT_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9_-]{3,64}$"
# E.164: "+", a country code that does not start with 0, at most 15 digits in all.
DEFAULT_TIMEZONE: Final = "Asia/Yekaterinburg"

Language = Literal["ru", "en"]
LANGUAGES: Final[tuple[Language, ...]] = ("ru", "en")
DeviceKind = Literal["blood_pressure", "glucose", "unknown"]
DEVICE_KINDS: Final[tuple[DeviceKind, ...]] = ("blood_pressure", "glucose", "unknown")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the default of every `created_at`)."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that must be timezone-aware on the way in and is aware UTC on the way out.

    SQLite has no time zone type: values are stored there as naive UTC text, whose text order is
    the time order, and made aware again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; timestamps must carry a time zone")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class Base(DeclarativeBase):
    """Declarative base of every relational model of the project."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Patient(Base):
    """A patient; `id` is the clinic's external patient id (e.g. "P-000123")."""

    __tablename__ = "patients"
    __table_args__ = (
        CheckConstraint(f"language IN ({_in(LANGUAGES)})", name="language"),
        CheckConstraint("length(phone) BETWEEN 9 AND 16", name="phone_length"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(2), default="ru")
    timezone: Mapped[str] = mapped_column(String(64), default=DEFAULT_TIMEZONE)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # The care team (alerts.tables.CareTeam) whose responsible doctor is paged for this patient.
    care_team_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("care_teams.id"), index=True)

    enrolments: Mapped[list[Enrolment]] = relationship(
        back_populates="patient", order_by="Enrolment.valid_from"
    )

    def __repr__(self) -> str:
        return f"Patient(id={self.id!r}, language={self.language!r}, timezone={self.timezone!r})"


class Device(Base):
    """A measuring device; `id` is the device_id it publishes under on MQTT."""

    __tablename__ = "devices"
    __table_args__ = (CheckConstraint(f"kind IN ({_in(DEVICE_KINDS)})", name="kind"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="unknown")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # When a reading (or status) from the device last arrived: for the device-silent rule.
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    enrolments: Mapped[list[Enrolment]] = relationship(
        back_populates="device", order_by="Enrolment.valid_from"
    )

    def __repr__(self) -> str:
        return f"Device(id={self.id!r}, kind={self.kind!r})"


class Enrolment(Base):
    """Which patient had a device during [valid_from, valid_to); valid_to NULL means "still has it".

    Rows are never deleted: the history says whose a reading was at its measured_at.
    """

    __tablename__ = "enrolments"
    __table_args__ = (
        CheckConstraint("valid_to IS NULL OR valid_to > valid_from", name="valid_interval"),
        Index("ix_enrolments_device_id_valid_from", "device_id", "valid_from"),
        # At most one open enrolment per device, enforced by the database itself.
        Index(
            "uq_enrolments_open_device",
            "device_id",
            unique=True,
            sqlite_where=text("valid_to IS NULL"),
            postgresql_where=text("valid_to IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    patient_id: Mapped[str] = mapped_column(String(64), ForeignKey("patients.id"), index=True)
    valid_from: Mapped[datetime] = mapped_column(UtcDateTime())
    valid_to: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    device: Mapped[Device] = relationship(back_populates="enrolments")
    patient: Mapped[Patient] = relationship(back_populates="enrolments")

    @property
    def is_open(self) -> bool:
        """True while the device is still with this patient (no end recorded)."""
        return self.valid_to is None

    def __repr__(self) -> str:
        return (
            f"Enrolment(device_id={self.device_id!r}, patient_id={self.patient_id!r}, "
            f"valid_from={self.valid_from!r}, valid_to={self.valid_to!r})"
        )


class QuarantinedMessage(Base):
    """An MQTT message the gateway could not store as a reading, kept byte for byte with the reason.

    `device_id` is not a foreign key: messages of unknown devices are exactly what lands here.
    """

    __tablename__ = "quarantined_messages"
    __table_args__ = (
        Index("ix_quarantined_messages_received_at", "received_at"),
        Index("ix_quarantined_messages_reason_received_at", "reason", "received_at"),
        Index("ix_quarantined_messages_device_id_received_at", "device_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    topic: Mapped[str] = mapped_column(Text())
    device_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text())
    payload: Mapped[bytes] = mapped_column(LargeBinary())

    def __repr__(self) -> str:
        return f"QuarantinedMessage(id={self.id!r}, reason={self.reason!r}, device_id={self.device_id!r})"


# patients.care_team_id refers to care_teams, defined with the other alert tables: the mapper needs that
# table known before the first flush, whichever module a process imports first.
import alerts.tables  # noqa: E402, F401
