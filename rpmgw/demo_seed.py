"""What the demo starts with: the simulated patients and devices, a care team with a doctor, an
on-call doctor. Idempotent: running the demo again changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alerts.staff import add_care_team, add_member, add_shift, add_staff, assign_patient, get_staff
from alerts.tables import CareTeam, OncallShift, Staff
from device_sim.devices import build_fleet
from device_sim.run import enrol_fleet
from rpmgw.models import Patient
from web.accounts import set_password
from web.tables import StaffCredential

DEMO_SEED = 7
DEMO_TEAM = "Therapy 1"
DEMO_DOCTOR = "doctor"
DEMO_ONCALL = "oncall"
DEMO_ADMIN = "admin"
# A demo, on 127.0.0.1 only: fixed, printed logins so a newcomer can try it at once.
DEMO_PASSWORDS = {DEMO_DOCTOR: "pressure-180-demo", DEMO_ADMIN: "enrolment-desk-7"}


def seed_demo(sessions: sessionmaker[Session], database_url: str, *, patients: int, seed: int) -> None:
    """Enrol the simulator's fleet and give its patients a care team, a doctor and an on-call doctor."""
    now = datetime.now(UTC)
    enrol_fleet(build_fleet(patients=patients, seed=seed), database_url, now=now)
    with sessions.begin() as session:
        if session.scalar(select(Staff.id).where(Staff.username == DEMO_DOCTOR)) is None:
            add_staff(
                session,
                username=DEMO_DOCTOR,
                display_name="Dr Anna Smirnova",
                phone="+79990001001",
                role="doctor",
            )
        if session.scalar(select(Staff.id).where(Staff.username == DEMO_ONCALL)) is None:
            add_staff(
                session,
                username=DEMO_ONCALL,
                display_name="Dr Oleg Volkov",
                phone="+79990001002",
                role="doctor",
            )
        if session.scalar(select(Staff.id).where(Staff.username == DEMO_ADMIN)) is None:
            add_staff(session, username=DEMO_ADMIN, display_name="Admin", phone="+79990001003", role="admin")
        for username, password in DEMO_PASSWORDS.items():
            staff = get_staff(session, username)
            if session.get(StaffCredential, staff.id) is None:
                set_password(session, staff, password, now=now)
        if session.scalar(select(CareTeam.id).where(CareTeam.name == DEMO_TEAM)) is None:
            add_care_team(session, DEMO_TEAM)
        add_member(session, DEMO_TEAM, DEMO_DOCTOR, responsible=True)
        for patient_id in session.scalars(select(Patient.id).where(Patient.care_team_id.is_(None))):
            assign_patient(session, patient_id, DEMO_TEAM)
        covered = session.scalar(
            select(OncallShift.id).where(
                OncallShift.starts_at <= now, OncallShift.ends_at > now + timedelta(hours=12)
            )
        )
        if covered is None:
            add_shift(session, DEMO_ONCALL, starts_at=now, ends_at=now + timedelta(days=1))
