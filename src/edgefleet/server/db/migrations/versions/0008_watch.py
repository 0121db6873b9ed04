"""deployment watch periods and drift limits: plan and stage columns, stage events

Revision ID: 0008
Revises: 0007

A plan's health gate may limit the new version's drift score (``max_drift_score``, worst PSI) and
keep checking its limits for ``watch_seconds`` after a stage is DEPLOYED, rolling it back or only
alerting (``watch_policy``). A stage remembers its watch (``watch_until``, ``watch_checked_at``,
``watch_breach``); ``stage_events`` records what happened to a stage beside its status (alerts).
Existing plans have no drift limit and no watch; existing stages are not watched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deployment_plans", sa.Column("max_drift_score", sa.Float(), nullable=True))
    op.add_column(
        "deployment_plans", sa.Column("watch_seconds", sa.Float(), nullable=False, server_default="0")
    )
    op.add_column(
        "deployment_plans",
        sa.Column("watch_policy", sa.String(length=16), nullable=False, server_default="ROLLBACK"),
    )
    op.add_column("plan_stages", sa.Column("watch_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("plan_stages", sa.Column("watch_checked_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("plan_stages", sa.Column("watch_breach", sa.Text(), nullable=True))
    op.create_table(
        "stage_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["stage_id"], ["plan_stages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_stage_events_stage", "stage_events", ["stage_id", "at"], unique=False)


def downgrade() -> None:
    # Plain ALTER TABLE (SQLite >= 3.35), not a batch copy: copying a table would drop and
    # re-create it, and dropping it cascades to the tables that refer to it.
    op.drop_index("ix_stage_events_stage", table_name="stage_events")
    op.drop_table("stage_events")
    op.drop_column("plan_stages", "watch_breach")
    op.drop_column("plan_stages", "watch_checked_at")
    op.drop_column("plan_stages", "watch_until")
    op.drop_column("deployment_plans", "watch_policy")
    op.drop_column("deployment_plans", "watch_seconds")
    op.drop_column("deployment_plans", "max_drift_score")
