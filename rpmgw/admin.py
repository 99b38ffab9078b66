"""Administration of patients, devices and enrolments: used by the CLI, the simulator and the web.

Every function works inside the caller's session and transaction (it flushes, it never commits), so
several operations can be committed together:

    with sessions.begin() as session:
        upsert_patient(session, patient_id="P-000123", display_name="Demo", phone="+79991234567")
        enrol_device(session, device_id="bp-000123", patient_id="P-000123", valid_from=now)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from rpmgw.errors import RpmgwError
from rpmgw.models import (
    DEFAULT_TIMEZONE,
    DEVICE_ID_PATTERN,
    DEVICE_KINDS,
    LANGUAGES,
    PATIENT_ID_PATTERN,
    Device,
    DeviceKind,
    Enrolment,
    Language,
    Patient,
)
from rpmgw.validation import check_zone, normalize_phone

# People type phone numbers with spaces, dashes, dots and brackets: "+7 (999) 123-45-67".


class AdminError(RpmgwError):
    """Base of the errors of administrative operations; the message is meant for the operator."""


class InvalidInput(AdminError):
    """A value is malformed (patient id, phone, language, time zone, device id, kind, timestamp)."""


class DuplicatePatient(AdminError):
    """A patient with this id already exists."""


class UnknownPatient(AdminError):
    """No patient has this id."""


class UnknownDevice(AdminError):
    """No device has this id."""


class EnrolmentConflict(AdminError):
    """The enrolment would overlap the device's history or was changed concurrently."""


class PatientInput(BaseModel):
    """A patient's details, validated; `phone` is normalised to E.164 without separators."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patient_id: Annotated[str, Field(pattern=PATIENT_ID_PATTERN)]
    display_name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: str
    language: Language = "ru"
    timezone: str = DEFAULT_TIMEZONE

    @field_validator("display_name", mode="before")
    @classmethod
    def _strip_name(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    _e164 = field_validator("phone", mode="before")(normalize_phone)
    _known_zone = field_validator("timezone")(check_zone)


@dataclass(frozen=True, slots=True)
class DatabaseCounts:
    """What `rpmgw status` shows about the registry."""

    patients: int
    devices: int
    open_enrolments: int


def validate_patient(
    *,
    patient_id: str,
    display_name: str,
    phone: str,
    language: str = "ru",
    timezone: str = DEFAULT_TIMEZONE,
) -> PatientInput:
    """Validate a patient's details; raises `InvalidInput` naming every bad field."""
    try:
        return PatientInput(
            patient_id=patient_id,
            display_name=display_name,
            phone=phone,
            language=language,
            timezone=timezone,
        )
    except ValidationError as exc:
        raise InvalidInput(f"invalid patient {patient_id!r}: {_problems(exc)}") from exc


def add_patient(
    session: Session,
    *,
    patient_id: str,
    display_name: str,
    phone: str,
    language: str = "ru",
    timezone: str = DEFAULT_TIMEZONE,
) -> Patient:
    """Create a patient; raises `InvalidInput` or `DuplicatePatient`."""
    details = validate_patient(
        patient_id=patient_id, display_name=display_name, phone=phone, language=language, timezone=timezone
    )
    if session.get(Patient, details.patient_id) is not None:
        raise DuplicatePatient(f"patient {details.patient_id!r} already exists")
    patient = Patient(
        id=details.patient_id,
        display_name=details.display_name,
        phone=details.phone,
        language=details.language,
        timezone=details.timezone,
    )
    session.add(patient)
    try:
        session.flush()
    except IntegrityError as exc:  # created by someone else since our check
        raise DuplicatePatient(f"patient {details.patient_id!r} already exists") from exc
    return patient


def upsert_patient(
    session: Session,
    *,
    patient_id: str,
    display_name: str,
    phone: str,
    language: str = "ru",
    timezone: str = DEFAULT_TIMEZONE,
) -> Patient:
    """Create the patient, or bring an existing one's details up to date (idempotent)."""
    details = validate_patient(
        patient_id=patient_id, display_name=display_name, phone=phone, language=language, timezone=timezone
    )
    patient = session.get(Patient, details.patient_id)
    if patient is None:
        return add_patient(session, **_patient_kwargs(details))
    patient.display_name = details.display_name
    patient.phone = details.phone
    patient.language = details.language
    patient.timezone = details.timezone
    session.flush()
    return patient


def get_patient(session: Session, patient_id: str) -> Patient:
    """The patient with this id; raises `UnknownPatient`."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise UnknownPatient(f"unknown patient {patient_id!r}: add it first with `rpmgw patient add`")
    return patient


def list_patients(session: Session) -> list[Patient]:
    """All patients, by id."""
    return list(session.scalars(select(Patient).order_by(Patient.id)))


def enrol_device(
    session: Session,
    *,
    device_id: str,
    patient_id: str,
    valid_from: datetime,
    kind: str = "unknown",
) -> Enrolment:
    """Give the device to the patient from `valid_from` on, closing its open enrolment at that moment.

    Creates the device when it is new (and records `kind` when one is given). Enrolling a device to
    the patient it is already with is a no-op returning the open enrolment. Refuses an unknown patient
    and a `valid_from` that is not after every earlier enrolment's start and end (history never overlaps).
    """
    _check_device_id(device_id)
    device_kind = _check_kind(kind)
    _require_aware(valid_from, "valid_from")
    get_patient(session, patient_id)
    device = _device_for_update(session, device_id, device_kind)
    history = list(
        session.scalars(
            select(Enrolment).where(Enrolment.device_id == device.id).order_by(Enrolment.valid_from)
        )
    )
    current = next((e for e in history if e.valid_to is None), None)
    if current is not None:
        if current.patient_id == patient_id and valid_from >= current.valid_from:
            return current
        if valid_from <= current.valid_from:
            raise EnrolmentConflict(
                f"device {device_id!r} is enrolled to {current.patient_id!r} since "
                f"{current.valid_from.isoformat()}; a new enrolment must start after that, "
                f"not at {valid_from.isoformat()}"
            )
    for past in history:
        if past.valid_to is not None and valid_from < past.valid_to:
            raise EnrolmentConflict(
                f"device {device_id!r} was enrolled to {past.patient_id!r} from "
                f"{past.valid_from.isoformat()} to {past.valid_to.isoformat()}; "
                f"a new enrolment cannot start at {valid_from.isoformat()}"
            )
    if current is not None:
        current.valid_to = valid_from
        # Closed before the insert: the partial unique index must never see two open enrolments.
        _flush(session, device_id)
    enrolment = Enrolment(device_id=device.id, patient_id=patient_id, valid_from=valid_from)
    session.add(enrolment)
    _flush(session, device_id)
    return enrolment


def end_enrolment(session: Session, *, device_id: str, valid_to: datetime) -> Enrolment:
    """Record that the device left its patient at `valid_to` (it was returned); raises when none is open."""
    _require_aware(valid_to, "valid_to")
    device = session.execute(
        select(Device).where(Device.id == device_id).with_for_update()
    ).scalar_one_or_none()
    if device is None:
        raise UnknownDevice(f"unknown device {device_id!r}")
    current = session.scalars(
        select(Enrolment).where(Enrolment.device_id == device_id, Enrolment.valid_to.is_(None))
    ).one_or_none()
    if current is None:
        raise EnrolmentConflict(f"device {device_id!r} has no open enrolment")
    if valid_to <= current.valid_from:
        raise EnrolmentConflict(
            f"device {device_id!r} is enrolled since {current.valid_from.isoformat()}; "
            f"it cannot be returned at {valid_to.isoformat()}"
        )
    current.valid_to = valid_to
    _flush(session, device_id)
    return current


def list_devices(session: Session) -> list[Device]:
    """All devices, by id, with their enrolment history loaded (oldest first)."""
    return list(session.scalars(select(Device).options(selectinload(Device.enrolments)).order_by(Device.id)))


def list_enrolments(session: Session, device_id: str | None = None) -> list[Enrolment]:
    """Enrolments (of one device, or of all), by device and then start."""
    query = select(Enrolment).order_by(Enrolment.device_id, Enrolment.valid_from)
    if device_id is not None:
        query = query.where(Enrolment.device_id == device_id)
    return list(session.scalars(query))


def database_counts(session: Session) -> DatabaseCounts:
    """How many patients, devices and open enrolments there are."""
    return DatabaseCounts(
        patients=session.scalar(select(func.count()).select_from(Patient)) or 0,
        devices=session.scalar(select(func.count()).select_from(Device)) or 0,
        open_enrolments=session.scalar(
            select(func.count()).select_from(Enrolment).where(Enrolment.valid_to.is_(None))
        )
        or 0,
    )


def _device_for_update(session: Session, device_id: str, kind: DeviceKind) -> Device:
    # The row lock serialises concurrent enrolments of one device (PostgreSQL; SQLite has one writer).
    device = session.execute(
        select(Device).where(Device.id == device_id).with_for_update()
    ).scalar_one_or_none()
    if device is None:
        device = Device(id=device_id, kind=kind)
        session.add(device)
        _flush(session, device_id)
    elif kind != "unknown" and device.kind != kind:
        device.kind = kind
    return device


def _flush(session: Session, device_id: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        raise EnrolmentConflict(
            f"device {device_id!r} was enrolled concurrently by someone else; try again"
        ) from exc


def _check_device_id(device_id: str) -> None:
    if not re.match(DEVICE_ID_PATTERN, device_id):
        raise InvalidInput(f"invalid device id {device_id!r}: use 3-64 characters of A-Z, a-z, 0-9, _ and -")


def _check_kind(kind: str) -> DeviceKind:
    for known in DEVICE_KINDS:
        if kind == known:
            return known
    raise InvalidInput(f"invalid device kind {kind!r}: use one of {', '.join(DEVICE_KINDS)}")


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{name} {value.isoformat()} has no time zone; give one, e.g. +05:00 or Z")


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch" and field == "patient_id":
            message = "use 1-64 characters of A-Z, a-z, 0-9, _ and -"
        elif err["type"] == "literal_error" and field == "language":
            message = f"{err['input']!r} is not one of {', '.join(LANGUAGES)}"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


def _patient_kwargs(details: PatientInput) -> dict[str, str]:
    return {
        "patient_id": details.patient_id,
        "display_name": details.display_name,
        "phone": details.phone,
        "language": details.language,
        "timezone": details.timezone,
    }
