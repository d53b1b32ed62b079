"""audit_logs: the platform's audit table, plus event time and an idempotency key

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written to run both on an empty database and on the platform's database, where
`audit_logs` already exists with the columns its audit UI reads: there it only adds
what this service needs (occurred_at, ingested_at, idempotency_key and their indexes).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create audit_logs if absent; add the service's columns and indexes."""
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS audit_logs (
            id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id     uuid NOT NULL,
            user_id       uuid,
            action        varchar(100) NOT NULL,
            resource_type varchar(50) NOT NULL,
            resource_id   varchar(255) NOT NULL,
            device_id     uuid,
            details       jsonb NOT NULL DEFAULT '{}'::jsonb,
            ip_address    inet,
            created_at    timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("ALTER TABLE audit_logs ADD COLUMN IF NOT EXISTS occurred_at timestamptz")
    op.execute(
        "ALTER TABLE audit_logs ADD COLUMN IF NOT EXISTS ingested_at timestamptz "
        "NOT NULL DEFAULT now()"
    )
    op.execute("ALTER TABLE audit_logs ADD COLUMN IF NOT EXISTS idempotency_key varchar(255)")
    op.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS uq_audit_logs_idempotency_key "
        "ON audit_logs (idempotency_key)"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_audit_logs_tenant_created "
        "ON audit_logs (tenant_id, created_at DESC)"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_audit_logs_tenant_action ON audit_logs (tenant_id, action)"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_audit_logs_tenant_occurred "
        "ON audit_logs (tenant_id, occurred_at DESC)"
    )


def downgrade() -> None:
    """Drop what this revision added; the platform's own table and columns stay."""
    op.execute("DROP INDEX IF EXISTS ix_audit_logs_tenant_occurred")
    op.execute("DROP INDEX IF EXISTS uq_audit_logs_idempotency_key")
    op.execute("ALTER TABLE audit_logs DROP COLUMN IF EXISTS idempotency_key")
    op.execute("ALTER TABLE audit_logs DROP COLUMN IF EXISTS ingested_at")
    op.execute("ALTER TABLE audit_logs DROP COLUMN IF EXISTS occurred_at")
