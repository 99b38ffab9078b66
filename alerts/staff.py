"""Staff, care teams and the on-call roster: who is paged for whose alerts.

The responsible doctor of a patient is the responsible member of the patient's care team; when the
responsible doctor does not acknowledge a critical alert, the doctor on call is paged. Like
`rpmgw.admin`, every function works inside the caller's session (it flushes, it never commits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alerts.errors import (
    ConcurrentChange,
    DuplicateCareTeam,
    DuplicateStaff,
    InvalidInput,
    UnknownCareTeam,
    UnknownPatient,
    UnknownStaff,
)
from alerts.tables import STAFF_ROLES, CareTeam, CareTeamMember, OncallShift, Staff, StaffRole
from rpmgw.models import Language, Patient
from rpmgw.validation import normalize_phone

USERNAME_PATTERN: Final = r"^[A-Za-z0-9_.-]{2,64}$"
# People type phone numbers with spaces, dashes, dots and brackets: "+7 (999) 123-45-67".


class StaffInput(BaseModel):
    """A staff member's details, validated; `phone` is normalised to E.164 without separators."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: Annotated[str, Field(pattern=USERNAME_PATTERN)]
    display_name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: str
    role: StaffRole
    language: Language = "ru"

    @field_validator("display_name", mode="before")
    @classmethod
    def _strip_name(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    _e164 = field_validator("phone", mode="before")(normalize_phone)


@dataclass(frozen=True, slots=True)
class TeamMember:
    """A member of a care team, as listed."""

    username: str
    display_name: str
    role: str
    active: bool
    responsible: bool


@dataclass(frozen=True, slots=True)
class TeamView:
    """A care team with its members and how many patients it looks after."""

    id: int
    name: str
    members: tuple[TeamMember, ...]
    patients: tuple[str, ...]

    @property
    def responsible(self) -> TeamMember | None:
        """The responsible member, if any."""
        return next((m for m in self.members if m.responsible), None)


@dataclass(frozen=True, slots=True)
class ShiftView:
    """An on-call shift with its staff member's username."""

    id: int
    username: str
    starts_at: datetime
    ends_at: datetime


# --- staff ---------------------------------------------------------------------------------------


def add_staff(
    session: Session, *, username: str, display_name: str, phone: str, role: str, language: str = "ru"
) -> Staff:
    """Create a staff member; raises `InvalidInput` or `DuplicateStaff`."""
    try:
        details = StaffInput(
            username=username, display_name=display_name, phone=phone, role=role, language=language
        )
    except ValidationError as exc:
        raise InvalidInput(f"invalid staff member {username!r}: {_problems(exc)}") from exc
    if session.scalar(select(Staff.id).where(Staff.username == details.username)) is not None:
        raise DuplicateStaff(f"staff member {details.username!r} already exists")
    staff = Staff(
        username=details.username,
        display_name=details.display_name,
        phone=details.phone,
        role=details.role,
        language=details.language,
        active=True,
    )
    session.add(staff)
    try:
        session.flush()
    except IntegrityError as exc:  # created by someone else since our check
        raise DuplicateStaff(f"staff member {details.username!r} already exists") from exc
    return staff


def get_staff(session: Session, username: str, *, active: bool = False) -> Staff:
    """The staff member with this username; `active=True` also refuses a deactivated one."""
    staff = session.scalars(select(Staff).where(Staff.username == username)).one_or_none()
    if staff is None:
        raise UnknownStaff(f"unknown staff member {username!r}: add them first with `rpmgw staff add`")
    if active and not staff.active:
        raise UnknownStaff(f"staff member {username!r} is deactivated")
    return staff


def set_staff_active(session: Session, username: str, active: bool) -> Staff:
    """Activate or deactivate a staff member (deactivated staff are never paged and cannot acknowledge)."""
    staff = get_staff(session, username)
    staff.active = active
    session.flush()
    return staff


def list_staff(session: Session) -> list[Staff]:
    """All staff members, by username."""
    return list(session.scalars(select(Staff).order_by(Staff.username)))


# --- care teams ----------------------------------------------------------------------------------


def add_care_team(session: Session, name: str) -> CareTeam:
    """Create a care team; raises `InvalidInput` or `DuplicateCareTeam`."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput(f"invalid care team name {name!r}: use 1-100 characters")
    if session.scalar(select(CareTeam.id).where(CareTeam.name == name)) is not None:
        raise DuplicateCareTeam(f"care team {name!r} already exists")
    team = CareTeam(name=name)
    session.add(team)
    try:
        session.flush()
    except IntegrityError as exc:
        raise DuplicateCareTeam(f"care team {name!r} already exists") from exc
    return team


def get_care_team(session: Session, name: str) -> CareTeam:
    """The care team with this name; raises `UnknownCareTeam`."""
    team = session.scalars(select(CareTeam).where(CareTeam.name == name)).one_or_none()
    if team is None:
        raise UnknownCareTeam(f"unknown care team {name!r}: add it first with `rpmgw team add`")
    return team


def add_member(
    session: Session, team_name: str, username: str, *, responsible: bool = False
) -> CareTeamMember:
    """Put a staff member in a team (idempotent); `responsible=True` makes them its responsible doctor.

    A team has at most one responsible member: making one responsible takes the role from the other.
    Only an active doctor can be made responsible.
    """
    team = get_care_team(session, team_name)
    staff = get_staff(session, username)
    if responsible:
        if staff.role != "doctor":
            raise InvalidInput(f"{username!r} is a {staff.role}: only a doctor can be the responsible member")
        if not staff.active:
            raise InvalidInput(f"{username!r} is deactivated and cannot be the responsible doctor")
        # Taken from the previous holder first: the partial unique index never sees two.
        session.execute(
            update(CareTeamMember)
            .where(
                CareTeamMember.team_id == team.id,
                CareTeamMember.staff_id != staff.id,
                CareTeamMember.responsible.is_(True),
            )
            .values(responsible=False)
        )
    member = session.get(CareTeamMember, (team.id, staff.id))
    if member is None:
        member = CareTeamMember(team_id=team.id, staff_id=staff.id, responsible=responsible)
        session.add(member)
    elif responsible:
        member.responsible = True
    try:
        session.flush()
    except IntegrityError as exc:
        raise ConcurrentChange(f"care team {team_name!r} was changed at the same time; try again") from exc
    return member


def remove_member(session: Session, team_name: str, username: str) -> None:
    """Take a staff member out of a team (a no-op when they are not in it)."""
    team = get_care_team(session, team_name)
    staff = get_staff(session, username)
    session.execute(
        delete(CareTeamMember).where(CareTeamMember.team_id == team.id, CareTeamMember.staff_id == staff.id)
    )


def assign_patient(session: Session, patient_id: str, team_name: str | None) -> Patient:
    """Make `team_name` the patient's care team (None: no team)."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise UnknownPatient(f"unknown patient {patient_id!r}: add it first with `rpmgw patient add`")
    patient.care_team_id = None if team_name is None else get_care_team(session, team_name).id
    session.flush()
    return patient


def list_care_teams(session: Session) -> list[TeamView]:
    """Every care team with its members and patients, by name."""
    teams = list(session.scalars(select(CareTeam).order_by(CareTeam.name)))
    members = session.execute(
        select(CareTeamMember.team_id, CareTeamMember.responsible, Staff)
        .join(Staff, Staff.id == CareTeamMember.staff_id)
        .order_by(Staff.username)
    ).all()
    patients = session.execute(
        select(Patient.care_team_id, Patient.id).where(Patient.care_team_id.is_not(None)).order_by(Patient.id)
    ).all()
    return [
        TeamView(
            id=team.id,
            name=team.name,
            members=tuple(
                TeamMember(s.username, s.display_name, s.role, s.active, responsible)
                for team_id, responsible, s in members
                if team_id == team.id
            ),
            patients=tuple(pid for team_id, pid in patients if team_id == team.id),
        )
        for team in teams
    ]


def responsible_doctor(session: Session, patient_id: str) -> Staff | None:
    """The active responsible member of the patient's care team; None without a team or one."""
    return session.scalars(
        select(Staff)
        .join(CareTeamMember, CareTeamMember.staff_id == Staff.id)
        .join(Patient, Patient.care_team_id == CareTeamMember.team_id)
        .where(Patient.id == patient_id, CareTeamMember.responsible.is_(True), Staff.active.is_(True))
    ).one_or_none()


def team_ids_of(session: Session, username: str) -> list[int]:
    """The ids of the care teams `username` belongs to (what their alert inbox shows)."""
    staff = get_staff(session, username)
    return list(session.scalars(select(CareTeamMember.team_id).where(CareTeamMember.staff_id == staff.id)))


# --- on call -------------------------------------------------------------------------------------


def add_shift(session: Session, username: str, *, starts_at: datetime, ends_at: datetime) -> OncallShift:
    """Put an active doctor on call during [starts_at, ends_at)."""
    for name, value in (("start", starts_at), ("end", ends_at)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput(f"shift {name} {value.isoformat()} has no time zone; give one, e.g. +05:00")
    if ends_at <= starts_at:
        raise InvalidInput(
            f"a shift must end after it starts (from {starts_at.isoformat()} to {ends_at.isoformat()})"
        )
    staff = get_staff(session, username, active=True)
    if staff.role != "doctor":
        raise InvalidInput(f"{username!r} is a {staff.role}: only a doctor can be on call")
    shift = OncallShift(staff_id=staff.id, starts_at=starts_at, ends_at=ends_at)
    session.add(shift)
    session.flush()
    return shift


def list_shifts(session: Session, *, ending_after: datetime | None = None) -> list[ShiftView]:
    """On-call shifts by start (only those ending after `ending_after` when given)."""
    query = (
        select(OncallShift, Staff.username)
        .join(Staff, Staff.id == OncallShift.staff_id)
        .order_by(OncallShift.starts_at, Staff.username)
    )
    if ending_after is not None:
        query = query.where(OncallShift.ends_at > ending_after)
    return [ShiftView(s.id, username, s.starts_at, s.ends_at) for s, username in session.execute(query)]


def oncall_now(session: Session, now: datetime) -> list[Staff]:
    """The active staff members whose shift covers `now`, by username."""
    covering = select(OncallShift.staff_id).where(OncallShift.starts_at <= now, OncallShift.ends_at > now)
    return list(
        session.scalars(
            select(Staff).where(Staff.id.in_(covering), Staff.active.is_(True)).order_by(Staff.username)
        )
    )


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch" and field == "username":
            message = "use 2-64 characters of A-Z, a-z, 0-9, _, . and -"
        elif err["type"] == "literal_error":
            choices: Sequence[str] = STAFF_ROLES if field == "role" else ("ru", "en")
            message = f"{err['input']!r} is not one of {', '.join(choices)}"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
