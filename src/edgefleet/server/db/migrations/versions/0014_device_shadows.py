"""each device's shadow pairs and their latest figures

Revision ID: 0014
Revises: 0013

Heartbeats carry the agent's shadow pairs (``Shadows``: a handle, its champion and shadow model
versions, the cumulative counters and latencies of the pair); ``device_shadows`` keeps the latest
report of each device and pair, which the fleet's shadow report sums per model pair. It starts
empty.

(The chain: 0010-0013 are being written beside this one; 0014 follows the newest merged revision.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_COUNTS = ("mirrored", "completed", "agreed", "disagreed", "shadow_errors", "dropped")
_LATENCIES = ("champion_p50_ms", "champion_p99_ms", "shadow_p50_ms", "shadow_p99_ms")
_PAIR = ("handle", "champion_model", "champion_version", "shadow_model", "shadow_version")


def upgrade() -> None:
    op.create_table(
        "device_shadows",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(63), nullable=False),
        sa.Column("champion_model", sa.String(63), nullable=False),
        sa.Column("champion_version", sa.String(30), nullable=False),
        sa.Column("shadow_model", sa.String(63), nullable=False),
        sa.Column("shadow_version", sa.String(30), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _COUNTS),
        *(sa.Column(name, sa.Float(), nullable=False) for name in _LATENCIES),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", *_PAIR),
    )
    op.create_index("ix_device_shadows_models", "device_shadows", ["shadow_model", "champion_model"])


def downgrade() -> None:
    # The figures are the agents' own: the devices report them again with their next heartbeats.
    op.drop_index("ix_device_shadows_models", table_name="device_shadows")
    op.drop_table("device_shadows")
