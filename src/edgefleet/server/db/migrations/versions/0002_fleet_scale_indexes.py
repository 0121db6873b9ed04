"""indexes for fleet scale: stage progress by status; no index on the heartbeat time

Revision ID: 0002
Revises: 0001

* ``stage_devices (stage_id, status)``: every device report refreshes its stage by asking "is any
  device of this stage still pending / how many failed"; with this index those are index probes
  instead of a scan of the stage (which made a rollout quadratic in the stage size).
* ``devices.last_heartbeat_at`` loses its index: every heartbeat rewrites that column, and an index
  on it turns each heartbeat's row update into a non-HOT update that inserts into every index of
  ``devices`` (PostgreSQL). The queries that filter on it (fleet reports, ListDevices with
  LatestHeartbeatAfter) filter by fleet or read most rows anyway.
* PostgreSQL only: ``devices`` and ``device_models`` keep 20 % of each page free (fillfactor 80) so
  that heartbeat updates can stay on the same page (HOT) instead of moving rows.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stage_devices", schema=None) as batch_op:
        batch_op.create_index("ix_stage_devices_stage_status", ["stage_id", "status"], unique=False)
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_last_heartbeat_at"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE devices SET (fillfactor = 80)")
        op.execute("ALTER TABLE device_models SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE device_models RESET (fillfactor)")
        op.execute("ALTER TABLE devices RESET (fillfactor)")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_last_heartbeat_at"), ["last_heartbeat_at"], unique=False)
    with op.batch_alter_table("stage_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_devices_stage_status")
