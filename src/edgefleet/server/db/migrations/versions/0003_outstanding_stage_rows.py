"""partial index of the stage rows devices still have to act on

Revision ID: 0003
Revises: 0002

Every GetDeployments asks "what does this device still have to act on?" (a row not yet fetched, in
progress, stopping, or asked to roll back). Almost every device has nothing, so the rows that
answer it are indexed by themselves: a small index, probed per polling device, instead of scanning
the device's rows or the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OUTSTANDING_SQL = "status IN ('READYTODEPLOY', 'INPROGRESS', 'STOPPING') OR rollback = 'REQUESTED'"


def upgrade() -> None:
    with op.batch_alter_table("stage_devices", schema=None) as batch_op:
        batch_op.create_index(
            "ix_stage_devices_outstanding",
            ["device_id"],
            unique=False,
            postgresql_where=sa.text(OUTSTANDING_SQL),
            sqlite_where=sa.text(OUTSTANDING_SQL),
        )


def downgrade() -> None:
    with op.batch_alter_table("stage_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_devices_outstanding")
