"""Patients, devices, enrolments and the quarantine.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("language IN ('ru', 'en')", name=op.f("ck_patients_language")),
        sa.CheckConstraint("length(phone) BETWEEN 9 AND 16", name=op.f("ck_patients_phone_length")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('blood_pressure', 'glucose', 'unknown')", name=op.f("ck_devices_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
    )
    op.create_table(
        "enrolments",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_to > valid_from", name=op.f("ck_enrolments_valid_interval")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_enrolments_device_id_devices")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_enrolments_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolments")),
    )
    op.create_index(
        "ix_enrolments_device_id_valid_from", "enrolments", ["device_id", "valid_from"], unique=False
    )
    op.create_index(op.f("ix_enrolments_patient_id"), "enrolments", ["patient_id"], unique=False)
    op.create_index(
        "uq_enrolments_open_device",
        "enrolments",
        ["device_id"],
        unique=True,
        sqlite_where=sa.text("valid_to IS NULL"),
        postgresql_where=sa.text("valid_to IS NULL"),
    )
    op.create_table(
        "quarantined_messages",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantined_messages")),
    )
    op.create_index(
        "ix_quarantined_messages_received_at", "quarantined_messages", ["received_at"], unique=False
    )
    op.create_index(
        "ix_quarantined_messages_reason_received_at",
        "quarantined_messages",
        ["reason", "received_at"],
        unique=False,
    )
    op.create_index(
        "ix_quarantined_messages_device_id_received_at",
        "quarantined_messages",
        ["device_id", "received_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("quarantined_messages")
    op.drop_index("uq_enrolments_open_device", table_name="enrolments")
    op.drop_index(op.f("ix_enrolments_patient_id"), table_name="enrolments")
    op.drop_index("ix_enrolments_device_id_valid_from", table_name="enrolments")
    op.drop_table("enrolments")
    op.drop_table("devices")
    op.drop_table("patients")
