"""the transfer backlog of Disk with periodic upload in each device's capture status

Revision ID: 0012
Revises: 0011

A heartbeat's ``Capture`` report carries the objects written to Disk and not yet confirmed by the
cloud store (``TransferPending``), their bytes and the oldest's age; ``device_capture_status``
keeps them beside the spool's backlog. Existing rows read 0 (nothing reported yet).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("transfer_pending", sa.BigInteger()),
    ("transfer_pending_bytes", sa.BigInteger()),
    ("transfer_oldest_age_seconds", sa.Float()),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("device_capture_status", sa.Column(name, kind, nullable=False, server_default="0"))


def downgrade() -> None:
    # Plain ALTER TABLE (SQLite >= 3.35), as 0008 does.
    for name, _kind in reversed(_COLUMNS):
        op.drop_column("device_capture_status", name)
