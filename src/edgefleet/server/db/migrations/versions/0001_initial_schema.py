"""initial schema

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificate_authority",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "fleets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=800), nullable=True),
        sa.Column("role_arn", sa.String(length=2048), nullable=True),
        sa.Column("output_location", sa.String(length=1024), nullable=False),
        sa.Column("kms_key_id", sa.String(length=2048), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "revoked_certificates",
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("device_name", sa.String(length=63), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_table(
        "deployment_plans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("max_error_rate", sa.Float(), nullable=True),
        sa.Column("max_p99_latency_ms", sa.Float(), nullable=True),
        sa.Column("min_inferences", sa.Integer(), nullable=False),
        sa.Column("observation_seconds", sa.Float(), nullable=False),
        sa.Column("device_timeout_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["fleet_id"],
            ["fleets.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("deployment_plans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployment_plans_fleet_id"), ["fleet_id"], unique=False)

    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=40), nullable=True),
        sa.Column("iot_thing_name", sa.String(length=128), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deregistered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolment_token_hash", sa.String(length=64), nullable=True),
        sa.Column("enrolment_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cert_serial", sa.String(length=64), nullable=True),
        sa.Column("cert_not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_metrics", sa.JSON(), nullable=False),
        sa.Column("platform_os", sa.String(length=32), nullable=True),
        sa.Column("platform_arch", sa.String(length=32), nullable=True),
        sa.Column("platform_accelerator", sa.String(length=64), nullable=True),
        sa.Column("max_models", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("enrolment_token_hash"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_devices_fleet_id"), ["fleet_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_last_heartbeat_at"), ["last_heartbeat_at"], unique=False)

    op.create_table(
        "fleet_reports",
        sa.Column("fleet_id", sa.Integer(), nullable=False),
        sa.Column("generated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["fleet_id"], ["fleets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("fleet_id"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=30), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=True),
        sa.Column("approval_status", sa.String(length=32), nullable=False),
        sa.Column("approval_by", sa.String(length=100), nullable=True),
        sa.Column("approval_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("approval_reason", sa.String(length=1000), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_versions_model_id"), ["model_id"], unique=False)

    op.create_table(
        "device_models",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=63), nullable=False),
        sa.Column("model_version", sa.String(length=30), nullable=False),
        sa.Column("latest_sample_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("latest_inference_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "model_name"),
    )
    with op.batch_alter_table("device_models", schema=None) as batch_op:
        batch_op.create_index("ix_device_models_model", ["model_name", "model_version"], unique=False)

    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "key"),
    )
    with op.batch_alter_table("device_tags", schema=None) as batch_op:
        batch_op.create_index("ix_device_tags_key_value", ["key", "value"], unique=False)

    op.create_table(
        "model_aliases",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("model_id", "alias"),
    )
    op.create_table(
        "model_packages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=160), nullable=False),
        sa.Column("target_os", sa.String(length=32), nullable=False),
        sa.Column("target_arch", sa.String(length=32), nullable=False),
        sa.Column("target_accelerator", sa.String(length=64), nullable=False),
        sa.Column("runtime", sa.String(length=64), nullable=False),
        sa.Column("artifact_key", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("sha1", sa.String(length=40), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("signer", sa.String(length=1000), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_version_id", "target", name="uq_model_packages_version_target"),
    )
    op.create_table(
        "plan_models",
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(length=63), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("requested_alias", sa.String(length=63), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
        ),
        sa.ForeignKeyConstraint(["plan_id"], ["deployment_plans.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("plan_id", "handle"),
    )
    with op.batch_alter_table("plan_models", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_plan_models_model_version_id"), ["model_version_id"], unique=False
        )

    op.create_table(
        "plan_stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("plan_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("subset_type", sa.String(length=16), nullable=False),
        sa.Column("percentage", sa.Integer(), nullable=True),
        sa.Column("device_names", sa.JSON(), nullable=False),
        sa.Column("name_contains", sa.String(length=63), nullable=True),
        sa.Column("selection_tags", sa.JSON(), nullable=False),
        sa.Column("failure_policy", sa.String(length=32), nullable=False),
        sa.Column("failure_threshold", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["deployment_plans.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("plan_id", "name", name="uq_plan_stages_plan_name"),
        sa.UniqueConstraint("plan_id", "position", name="uq_plan_stages_plan_position"),
    )
    op.create_table(
        "stage_devices",
        sa.Column("stage_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("rollback", sa.String(length=16), nullable=False),
        sa.Column("device_result", sa.String(length=32), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("health", sa.JSON(), nullable=False),
        sa.Column("observing", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["stage_id"], ["plan_stages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("stage_id", "device_id"),
    )
    with op.batch_alter_table("stage_devices", schema=None) as batch_op:
        batch_op.create_index("ix_stage_devices_device_status", ["device_id", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stage_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_stage_devices_device_status")

    op.drop_table("stage_devices")
    op.drop_table("plan_stages")
    with op.batch_alter_table("plan_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_models_model_version_id"))

    op.drop_table("plan_models")
    op.drop_table("model_packages")
    op.drop_table("model_aliases")
    with op.batch_alter_table("device_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_device_tags_key_value")

    op.drop_table("device_tags")
    with op.batch_alter_table("device_models", schema=None) as batch_op:
        batch_op.drop_index("ix_device_models_model")

    op.drop_table("device_models")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_model_id"))

    op.drop_table("model_versions")
    op.drop_table("fleet_reports")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_last_heartbeat_at"))
        batch_op.drop_index(batch_op.f("ix_devices_fleet_id"))

    op.drop_table("devices")
    with op.batch_alter_table("deployment_plans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_plans_fleet_id"))

    op.drop_table("deployment_plans")
    op.drop_table("revoked_certificates")
    op.drop_table("operator_tokens")
    op.drop_table("models")
    op.drop_table("fleets")
    op.drop_table("certificate_authority")
