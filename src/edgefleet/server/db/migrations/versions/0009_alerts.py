"""drift score time series, alert rules and events, the webhook outbox

Revision ID: 0009
Revises: 0008

``drift_buckets`` and ``drift_scores`` hold the periodic work's scores of each complete time bucket
(server/drift.py); ``alert_rules`` the thresholds per model (optionally fleet and version),
``alert_events`` the crossings (one open per rule, fleet, version, feature and kind), and
``webhook_deliveries`` the durable outbox of webhook posts (server/alerts.py, server/webhooks.py).
All start empty. ``summary_windows`` gets an index on ``received_at``: the scorer reads the windows
that arrived since its last round.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index("ix_summary_windows_received_at", "summary_windows", ["received_at"], unique=False)
    op.create_table(
        "drift_buckets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("bucket_start", _TIME, nullable=False),
        sa.Column("bucket_end", _TIME, nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("last_received_at", _TIME, nullable=False),
        sa.Column("baseline_at", _TIME, nullable=False),
        sa.Column("mismatches", sa.JSON(), nullable=False),
        sa.Column("scored_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "fleet_id", "model_name", "model_version", "bucket_start", "bucket_end", name="uq_drift_buckets"
        ),
    )
    op.create_index("ix_drift_buckets_bucket_end", "drift_buckets", ["bucket_end"], unique=False)
    op.create_table(
        "drift_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bucket_id", sa.Integer(), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("bucket_start", _TIME, nullable=False),
        sa.Column("bucket_end", _TIME, nullable=False),
        sa.Column("feature", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=3), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["bucket_id"], ["drift_buckets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_drift_scores_bucket", "drift_scores", ["bucket_id"], unique=False)
    op.create_index(
        "ix_drift_scores_series",
        "drift_scores",
        ["fleet_id", "model_name", "model_version", "bucket_start"],
        unique=False,
    )
    op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=True),
        sa.Column("model_version", sa.String(length=30), nullable=True),
        sa.Column("max_psi", sa.Float(), nullable=True),
        sa.Column("max_ks", sa.Float(), nullable=True),
        sa.Column("max_js", sa.Float(), nullable=True),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("webhook_secret", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "name", name="uq_alert_rules_model_name"),
    )
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("rule_name", sa.String(length=63), nullable=False),
        sa.Column("fleet_name", sa.String(length=63), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("feature", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=3), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("bucket_start", _TIME, nullable=False),
        sa.Column("bucket_end", _TIME, nullable=False),
        sa.Column("opened_at", _TIME, nullable=False),
        sa.Column("cleared_at", _TIME, nullable=True),
        sa.Column("cleared_score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["rule_id"], ["alert_rules.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "uq_alert_events_open",
        "alert_events",
        ["rule_id", "fleet_name", "model_version", "feature", "kind"],
        unique=True,
        postgresql_where=sa.text("cleared_at IS NULL"),
        sqlite_where=sa.text("cleared_at IS NULL"),
    )
    op.create_index("ix_alert_events_model", "alert_events", ["model_name", "opened_at"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("signature", sa.String(length=100), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=True),
        sa.Column("delivered_at", _TIME, nullable=True),
        sa.Column("failed_at", _TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["event_id"], ["alert_events.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_alert_events_model", table_name="alert_events")
    op.drop_index("uq_alert_events_open", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_table("alert_rules")
    op.drop_index("ix_drift_scores_series", table_name="drift_scores")
    op.drop_index("ix_drift_scores_bucket", table_name="drift_scores")
    op.drop_table("drift_scores")
    op.drop_index("ix_drift_buckets_bucket_end", table_name="drift_buckets")
    op.drop_table("drift_buckets")
    op.drop_index("ix_summary_windows_received_at", table_name="summary_windows")
