"""drift monitoring: live model summary windows from heartbeats, and baselines per model version

Revision ID: 0007
Revises: 0006

``summary_windows`` holds each device's live summary (mergeable sketches, JSON) of a model version
per window, as heartbeats bring them; ``baselines`` the reference summary of a model version that
the drift report scores them against. Both start empty.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "summary_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "device_id", "model_name", "model_version", "window_start", name="uq_summary_windows_window"
        ),
    )
    op.create_index(
        "ix_summary_windows_fleet_model",
        "summary_windows",
        ["fleet_id", "model_name", "model_version", "window_end"],
        unique=False,
    )
    op.create_index("ix_summary_windows_window_end", "summary_windows", ["window_end"], unique=False)
    op.create_table(
        "baselines",
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_version_id"),
    )


def downgrade() -> None:
    op.drop_table("baselines")
    op.drop_index("ix_summary_windows_window_end", table_name="summary_windows")
    op.drop_index("ix_summary_windows_fleet_model", table_name="summary_windows")
    op.drop_table("summary_windows")
