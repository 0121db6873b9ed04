"""the stored time series of fleet-level model figures

Revision ID: 0015
Revises: 0014

``model_figure_samples`` keeps, per fleet, model version and interval (``Timing.figures_interval``),
what the connected devices' latest heartbeats said: devices, the cumulative request and error
counters summed, p50 (median of devices) and p99 (worst device) latency. The periodic work writes
it; it starts empty.

(The chain: 0013 may be written beside this one; 0015 follows the newest merged revision.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_figure_samples",
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(63), nullable=False),
        sa.Column("model_version", sa.String(30), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Float(), nullable=False),
        sa.Column("errors", sa.Float(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("fleet_id", "model_name", "model_version", "at"),
    )
    op.create_index("ix_model_figure_samples_at", "model_figure_samples", ["at"])


def downgrade() -> None:
    # A history of figures the devices no longer report: it is lost (the series starts again).
    op.drop_index("ix_model_figure_samples_at", table_name="model_figure_samples")
    op.drop_table("model_figure_samples")
