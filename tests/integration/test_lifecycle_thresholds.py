"""Per-patient threshold versions on SQLite and PostgreSQL: full sets per version, labels, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from alerts import staff
from alerts.errors import AlertsError, InvalidInput, UnknownPatient, UnknownStaff
from alerts.tables import ThresholdVersion
from alerts.threshold_store import current_overrides, history, set_patient_thresholds, thresholds_for
from alerts.thresholds import Thresholds, ThresholdsError, with_overrides
from rpmgw import admin
from rpmgw.errors import RpmgwError
from tests.fixtures.db import MigratedDb

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
CLINIC = with_overrides(Thresholds(), {"low_sbp": 95})


def _people(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions.begin() as session:
        for pid in ("P-1", "P-2", "P-3"):
            admin.add_patient(session, patient_id=pid, display_name="Patient", phone="+79990000001")
        staff.add_staff(session, username="dr-a", display_name="Dr A", phone="+79990000101", role="doctor")


def _set(
    migrated_db: MigratedDb, patient_id: str, overrides: dict[str, int | float], **kwargs: object
) -> int:
    options: dict[str, object] = {"by_username": "dr-a", "reason": "elderly, falls", "now": T0} | kwargs
    with migrated_db.sessions.begin() as session:
        return set_patient_thresholds(session, patient_id, overrides, clinic=CLINIC, **options)  # type: ignore[arg-type]


def test_versions_hold_the_full_set_and_the_newest_applies(migrated_db: MigratedDb) -> None:
    _people(migrated_db)
    assert _set(migrated_db, "P-1", {"low_sbp": 100}) == 1
    assert _set(migrated_db, "P-1", {"low_sbp": 105, "high_sbp": 150}, now=T0 + timedelta(days=1)) == 2
    assert _set(migrated_db, "P-2", {"hypo_l1_mmol": 4.5}) == 1
    assert _set(migrated_db, "P-2", {}, reason="back to the clinic's") == 2

    with migrated_db.sessions() as session:
        effective = thresholds_for(session, ["P-1", "P-2", "P-3"], CLINIC)
        versions = history(session, "P-1")
        assert current_overrides(session, "P-1") == {"high_sbp": 150, "low_sbp": 105}
        assert current_overrides(session, "P-3") == {}

    p1, p1_label = effective["P-1"]
    assert (p1.low_sbp, p1.high_sbp, p1.severe_sbp, p1_label) == (105, 150, 180, "patient:P-1:v2")
    p2, p2_label = effective["P-2"]
    assert (p2.hypo_l1_mmol, p2.low_sbp, p2_label) == (3.9, 95, "patient:P-2:v2")
    assert effective["P-3"] == (CLINIC, "clinic")
    assert [(v.version, v.overrides, v.changed_by, v.changed_at, v.reason) for v in versions] == [
        (1, {"low_sbp": 100}, "dr-a", T0, "elderly, falls"),
        (2, {"high_sbp": 150, "low_sbp": 105}, "dr-a", T0 + timedelta(days=1), "elderly, falls"),
    ]
    assert versions[-1].label == "patient:P-1:v2"


def test_thresholds_for_no_patients_is_empty(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions() as session:
        assert thresholds_for(session, [], CLINIC) == {}


@pytest.mark.parametrize(
    ("patient_id", "overrides", "options", "error", "message"),
    [
        ("P-1", {"low_sbp": 170}, {}, ThresholdsError, r"low_sbp \(170\) must be below high_sbp \(160\)"),
        ("P-1", {"lowest_sbp": 80}, {}, ThresholdsError, "unknown threshold 'lowest_sbp'"),
        ("P-1", {"low_sbp": 100}, {"reason": "  "}, InvalidInput, "needs a reason"),
        ("P-1", {"low_sbp": 100}, {"by_username": "dr-x"}, UnknownStaff, "unknown staff member 'dr-x'"),
        ("P-404", {"low_sbp": 100}, {}, UnknownPatient, "unknown patient 'P-404'"),
    ],
    ids=["inconsistent", "unknown-key", "no-reason", "unknown-staff", "unknown-patient"],
)
def test_bad_changes_are_refused_and_store_nothing(
    migrated_db: MigratedDb,
    patient_id: str,
    overrides: dict[str, int | float],
    options: dict[str, object],
    error: type[RpmgwError],
    message: str,
) -> None:
    _people(migrated_db)
    with pytest.raises(error, match=message):
        _set(migrated_db, patient_id, overrides, **options)
    with migrated_db.sessions() as session:
        assert session.scalars(select(ThresholdVersion)).all() == []
    assert issubclass(error, AlertsError | ThresholdsError)


def test_a_stored_set_the_clinic_no_longer_allows_falls_back_to_the_clinic(migrated_db: MigratedDb) -> None:
    _people(migrated_db)
    _set(migrated_db, "P-1", {"high_sbp": 125})
    stricter_clinic = with_overrides(Thresholds(), {"low_sbp": 130})
    with migrated_db.sessions() as session:
        assert thresholds_for(session, ["P-1"], stricter_clinic)["P-1"] == (stricter_clinic, "clinic")


def test_the_gateways_threshold_cache_sees_every_new_version_at_the_next_call(
    migrated_db: MigratedDb,
) -> None:
    from alerts.threshold_store import ThresholdCache

    _people(migrated_db)
    cache = ThresholdCache(CLINIC)

    def effective() -> dict[str, tuple[Thresholds, str]]:
        with migrated_db.sessions.begin() as session:
            return cache.thresholds_for(session, ["P-1", "P-2", "P-3"])

    assert effective() == {pid: (CLINIC, "clinic") for pid in ("P-1", "P-2", "P-3")}
    _set(migrated_db, "P-1", {"low_sbp": 100})
    first = effective()
    assert (first["P-1"][0].low_sbp, first["P-1"][1]) == (100, "patient:P-1:v1")
    assert first["P-2"] == (CLINIC, "clinic")
    _set(migrated_db, "P-2", {"hypo_l1_mmol": 4.5})
    _set(migrated_db, "P-1", {}, reason="back to the clinic's")
    second = effective()
    assert second["P-1"] == (with_overrides(CLINIC, {}, source="patient:P-1:v2"), "patient:P-1:v2")
    assert (second["P-2"][0].hypo_l1_mmol, second["P-2"][1]) == (4.5, "patient:P-2:v1")
    with migrated_db.sessions() as session:
        assert second == thresholds_for(session, ["P-1", "P-2", "P-3"], CLINIC)
