"""Who may see what: roles, and care teams for patients' data.

Doctors and nurses see the patients of the care teams they belong to, and nothing else; an
administrator manages accounts, teams, patients' registration and devices but reads no clinical data.
Only a doctor changes a patient's thresholds. These rules are the same for pages and the JSON API.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from alerts.tables import Alert, CareTeamMember, Staff
from rpmgw.models import Patient

CLINICAL_ROLES: Final = ("doctor", "nurse")
ADMIN_ROLES: Final = ("admin",)
THRESHOLD_ROLES: Final = ("doctor",)


def team_ids(session: Session, staff: Staff) -> list[int]:
    """The care teams the staff member belongs to."""
    return list(session.scalars(select(CareTeamMember.team_id).where(CareTeamMember.staff_id == staff.id)))


def sees_clinical_data(staff: Staff) -> bool:
    """Whether the role reads patients' readings and alerts at all."""
    return staff.role in CLINICAL_ROLES


def patients_query(session: Session, staff: Staff) -> Select[tuple[Patient]]:
    """The patients this staff member may see (none for a role without clinical access)."""
    query = select(Patient)
    if not sees_clinical_data(staff):
        return query.where(Patient.id.is_(None))
    return query.where(Patient.care_team_id.in_(team_ids(session, staff)))


def can_see_patient(session: Session, staff: Staff, patient_id: str) -> bool:
    """Whether the staff member may see this patient's data (False for an unknown patient too)."""
    if not sees_clinical_data(staff):
        return False
    care_team = session.scalar(select(Patient.care_team_id).where(Patient.id == patient_id))
    return care_team is not None and care_team in team_ids(session, staff)


def can_see_alert(session: Session, staff: Staff, alert: Alert) -> bool:
    """Whether the staff member may see (and acknowledge) this alert: it is their patient's."""
    return can_see_patient(session, staff, alert.patient_id)


def can_change_thresholds(session: Session, staff: Staff, patient_id: str) -> bool:
    """Whether the staff member may change this patient's thresholds (their own patient, and a doctor)."""
    return staff.role in THRESHOLD_ROLES and can_see_patient(session, staff, patient_id)
