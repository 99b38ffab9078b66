"""Alerts: staff, care teams, on-call roster, per-patient threshold versions, activity, alert lifecycle.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "staff",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('doctor', 'nurse', 'admin')", name=op.f("ck_staff_role")),
        sa.CheckConstraint("language IN ('ru', 'en')", name=op.f("ck_staff_language")),
        sa.CheckConstraint("length(phone) BETWEEN 9 AND 16", name=op.f("ck_staff_phone_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff")),
        sa.UniqueConstraint("username", name=op.f("uq_staff_username")),
    )
    op.create_table(
        "care_teams",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_care_teams")),
        sa.UniqueConstraint("name", name=op.f("uq_care_teams_name")),
    )
    op.create_table(
        "care_team_members",
        sa.Column("team_id", BIG_ID, nullable=False),
        sa.Column("staff_id", BIG_ID, nullable=False),
        sa.Column("responsible", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["care_teams.id"], name=op.f("fk_care_team_members_team_id_care_teams")
        ),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_care_team_members_staff_id_staff")),
        sa.PrimaryKeyConstraint("team_id", "staff_id", name=op.f("pk_care_team_members")),
    )
    op.create_index(op.f("ix_care_team_members_staff_id"), "care_team_members", ["staff_id"], unique=False)
    op.create_index(
        "uq_care_team_members_responsible",
        "care_team_members",
        ["team_id"],
        unique=True,
        sqlite_where=sa.text("responsible = 1"),
        postgresql_where=sa.text("responsible"),
    )
    op.create_table(
        "oncall_shifts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("staff_id", BIG_ID, nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_oncall_shifts_interval")),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_oncall_shifts_staff_id_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oncall_shifts")),
    )
    op.create_index(op.f("ix_oncall_shifts_staff_id"), "oncall_shifts", ["staff_id"], unique=False)
    op.create_index(
        "ix_oncall_shifts_starts_at_ends_at", "oncall_shifts", ["starts_at", "ends_at"], unique=False
    )
    op.create_table(
        "threshold_versions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("overrides", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_threshold_versions_version_positive")),
        sa.CheckConstraint("length(trim(reason)) > 0", name=op.f("ck_threshold_versions_reason_present")),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_threshold_versions_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_threshold_versions")),
    )
    op.create_index(
        "uq_threshold_versions_patient_id_version",
        "threshold_versions",
        ["patient_id", "version"],
        unique=True,
    )
    op.create_table(
        "patient_activity",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("last_measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("type IN ('blood_pressure', 'glucose')", name=op.f("ck_patient_activity_type")),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_patient_activity_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("patient_id", "type", name=op.f("pk_patient_activity")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=32), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_measured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_measured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reading_count", sa.Integer(), nullable=False),
        sa.Column("worst_value_text", sa.Text(), nullable=False),
        sa.Column("worst_key", sa.Float(), nullable=True),
        sa.Column("last_value_text", sa.Text(), nullable=False),
        sa.Column("confirmation", sa.String(length=16), nullable=True),
        sa.Column("confirmation_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("threshold_version", sa.String(length=120), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        sa.Column("next_escalation_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("severity IN ('critical', 'urgent', 'routine')", name=op.f("ck_alerts_severity")),
        sa.CheckConstraint(
            "confirmation IS NULL OR confirmation IN ('pending', 'confirmed', 'not_confirmed', 'no_repeat')",
            name=op.f("ck_alerts_confirmation"),
        ),
        sa.CheckConstraint("escalation_level BETWEEN 0 AND 2", name=op.f("ck_alerts_escalation_level")),
        sa.CheckConstraint("reading_count >= 0", name=op.f("ck_alerts_reading_count")),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_alerts_patient_id_patients")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(
        "uq_alerts_open_patient_family",
        "alerts",
        ["patient_id", "family"],
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    )
    op.create_index("ix_alerts_patient_id_opened_at", "alerts", ["patient_id", "opened_at"], unique=False)
    op.create_index("ix_alerts_next_escalation_at", "alerts", ["next_escalation_at"], unique=False)
    op.create_index("ix_alerts_closed_at", "alerts", ["closed_at"], unique=False)
    op.create_table(
        "alert_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("alert_id", BIG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('raised', 'reading_attached', 'upgraded', 'confirmed', 'not_confirmed', "
            "'no_repeat', 'cleared', 'reactivated', 'remeasure', 'notified', 'escalated', "
            "'acknowledged', 'closed')",
            name=op.f("ck_alert_events_kind"),
        ),
        sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], name=op.f("fk_alert_events_alert_id_alerts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_events")),
    )
    op.create_index(
        "uq_alert_events_alert_id_kind_msg_id",
        "alert_events",
        ["alert_id", "kind", "msg_id"],
        unique=True,
        sqlite_where=sa.text("msg_id IS NOT NULL"),
        postgresql_where=sa.text("msg_id IS NOT NULL"),
    )
    op.create_index("ix_alert_events_alert_id_at", "alert_events", ["alert_id", "at"], unique=False)
    op.create_index("ix_alert_events_msg_id", "alert_events", ["msg_id"], unique=False)
    op.create_table(
        "acknowledgements",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("alert_id", BIG_ID, nullable=False),
        sa.Column("staff_id", BIG_ID, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason_code", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("time_to_ack_seconds", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "reason_code IN ('contacted_patient', 'medication_changed', 'measurement_error', "
            "'emergency_services', 'no_action_needed')",
            name=op.f("ck_acknowledgements_reason_code"),
        ),
        sa.CheckConstraint("length(trim(note)) > 0", name=op.f("ck_acknowledgements_note_present")),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_acknowledgements_alert_id_alerts")
        ),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], name=op.f("fk_acknowledgements_staff_id_staff")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acknowledgements")),
        sa.UniqueConstraint("alert_id", name=op.f("uq_acknowledgements_alert_id")),
    )
    op.create_index(op.f("ix_acknowledgements_staff_id"), "acknowledgements", ["staff_id"], unique=False)

    op.add_column("devices", sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
    # SQLite cannot add a foreign key in place: batch mode rebuilds the table (PostgreSQL alters it).
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("care_team_id", BIG_ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_patients_care_team_id_care_teams"), "care_teams", ["care_team_id"], ["id"]
        )
        batch.create_index(op.f("ix_patients_care_team_id"), ["care_team_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.drop_index(op.f("ix_patients_care_team_id"))
        batch.drop_constraint(op.f("fk_patients_care_team_id_care_teams"), type_="foreignkey")
        batch.drop_column("care_team_id")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("last_seen_at")
    op.drop_table("acknowledgements")
    op.drop_table("alert_events")
    op.drop_table("alerts")
    op.drop_table("patient_activity")
    op.drop_table("threshold_versions")
    op.drop_table("oncall_shifts")
    op.drop_table("care_team_members")
    op.drop_table("care_teams")
    op.drop_table("staff")
