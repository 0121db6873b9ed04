"""a device's reported models are keyed by name and version

Revision ID: 0004
Revises: 0003

``device_models`` was keyed by ``(device_id, model_name)``, so a device serving two versions of one
model at once (an A/B test: two handles, one model name) kept only one of them, and the fleet report
and ListDevices under-counted. The primary key becomes ``(device_id, model_name, model_version)``;
existing rows are unique under it already.

Downgrading keeps one version per device and model name (the most recently reported; of equally
recent ones, the highest version string) before the key narrows again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: PostgreSQL's default name of the key; SQLite's (unnamed before this revision) gets it too
PRIMARY_KEY = "device_models_pkey"
OLD_KEY = ["device_id", "model_name"]
NEW_KEY = ["device_id", "model_name", "model_version"]


def upgrade() -> None:
    _replace_primary_key(OLD_KEY, NEW_KEY)


def downgrade() -> None:
    op.execute(
        """
        DELETE FROM device_models
        WHERE EXISTS (
            SELECT 1 FROM device_models AS newer
            WHERE newer.device_id = device_models.device_id
              AND newer.model_name = device_models.model_name
              AND (newer.updated_at > device_models.updated_at
                   OR (newer.updated_at = device_models.updated_at
                       AND newer.model_version > device_models.model_version)))
        """
    )
    _replace_primary_key(NEW_KEY, OLD_KEY)


def _replace_primary_key(old: list[str], new: list[str]) -> None:
    # PostgreSQL drops and adds the key constraint in place. SQLite copies the table into a new one;
    # the table is given as it stands (rather than reflected) so that its key has a name to drop.
    with op.batch_alter_table("device_models", schema=None, copy_from=_device_models(old)) as batch_op:
        batch_op.drop_constraint(PRIMARY_KEY, type_="primary")
        batch_op.create_primary_key(PRIMARY_KEY, new)


def _device_models(key: list[str]) -> sa.Table:
    """``device_models`` as revision 0001 created it, with the primary key ``key``."""
    return sa.Table(
        "device_models",
        sa.MetaData(),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("latest_sample_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latest_inference_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint(*key, name=PRIMARY_KEY),
        sa.Index("ix_device_models_model", "model_name", "model_version"),
    )
