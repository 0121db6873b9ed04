"""the capture index: the capture objects devices reported uploaded, and each device's spool backlog

Revision ID: 0006
Revises: 0005

Heartbeats carry ``Capture`` (edgefleet extension): the device's capture spool backlog and the
``.jsonl`` objects the store confirmed since the previous heartbeat. ``capture_objects`` indexes
those objects (key unique per fleet: a re-reported upload adds no row); ``device_capture_status``
keeps each device's latest backlog figures. Both start empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "capture_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("records", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("raw_objects", sa.Integer(), nullable=False),
        sa.Column("first_inference_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_inference_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fleet_id", "key", name="uq_capture_objects_fleet_key"),
    )
    op.create_index(
        "ix_capture_objects_fleet_model",
        "capture_objects",
        ["fleet_id", "model_name", "model_version", "first_inference_at"],
    )
    op.create_index(
        "ix_capture_objects_device_model",
        "capture_objects",
        ["device_id", "model_name", "model_version", "last_inference_at"],
    )
    op.create_table(
        "device_capture_status",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("backlog_records", sa.BigInteger(), nullable=False),
        sa.Column("backlog_bytes", sa.BigInteger(), nullable=False),
        sa.Column("oldest_age_seconds", sa.Float(), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    # The index only describes objects that stay in the capture store; the devices report new ones.
    op.drop_table("device_capture_status")
    op.drop_index("ix_capture_objects_device_model", table_name="capture_objects")
    op.drop_index("ix_capture_objects_fleet_model", table_name="capture_objects")
    op.drop_table("capture_objects")
