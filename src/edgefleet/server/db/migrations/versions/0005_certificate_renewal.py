"""a device may hold a renewed certificate that it has not used yet

Revision ID: 0005
Revises: 0004

A device renews its client certificate over mutual TLS before it expires
(``POST /device/v1/RenewCertificate``). The new certificate's serial and expiry are kept in
``renewed_cert_serial`` / ``renewed_cert_not_after`` while the current certificate stays valid; the
first request made with the new certificate makes it the current one and revokes the old one.
Both columns are empty for every existing device.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("renewed_cert_serial", sa.String(length=64), nullable=True))
    op.add_column("devices", sa.Column("renewed_cert_not_after", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # A renewal not used yet is forgotten: the device keeps its current certificate and renews again.
    # Plain ALTER TABLE (SQLite >= 3.35), not a batch copy: copying ``devices`` would drop and
    # re-create it, and dropping it cascades to every table that refers to devices.
    op.drop_column("devices", "renewed_cert_not_after")
    op.drop_column("devices", "renewed_cert_serial")
