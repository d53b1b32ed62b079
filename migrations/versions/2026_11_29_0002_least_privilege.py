"""least privilege: an insert-only writer role and a tenant-scoped reader role

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Audit rows are evidence: the role the service runs as may add rows and nothing else
(no UPDATE, DELETE or TRUNCATE), and readers see only the tenant they name in
`app.current_tenant`. Row-level security is forced, so it holds for the table's owner
too; only superusers bypass it. The roles are group roles (NOLOGIN): operators grant
them to the login roles they create, e.g. `CREATE ROLE session_audit LOGIN PASSWORD
'…' IN ROLE audit_writer`.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the roles, grant them, and turn on forced row-level security."""
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_writer') THEN
                CREATE ROLE audit_writer NOLOGIN;
            END IF;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_reader') THEN
                CREATE ROLE audit_reader NOLOGIN;
            END IF;
        END
        $$
        """
    )
    op.execute("GRANT USAGE ON SCHEMA public TO audit_writer, audit_reader")
    op.execute("GRANT INSERT ON audit_logs TO audit_writer")
    # ON CONFLICT (idempotency_key) must read the key to find a conflict: that one
    # column, nothing else of any row, and no UPDATE, DELETE or TRUNCATE.
    op.execute("GRANT SELECT (idempotency_key) ON audit_logs TO audit_writer")
    # The service checks at start-up that the schema is at the revision it needs.
    op.execute("GRANT SELECT ON alembic_version TO audit_writer")
    op.execute("GRANT SELECT ON audit_logs TO audit_reader")
    op.execute("ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_logs FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY audit_logs_writer_insert ON audit_logs FOR INSERT TO audit_writer "
        "WITH CHECK (true)"
    )
    # Under row-level security ON CONFLICT checks new rows against SELECT policies too;
    # the column grant above still limits the writer to the idempotency key.
    op.execute(
        "CREATE POLICY audit_logs_writer_conflicts ON audit_logs FOR SELECT TO audit_writer "
        "USING (true)"
    )
    # Unset or empty app.current_tenant matches no row: a reader must say who it reads for.
    op.execute(
        "CREATE POLICY audit_logs_reader_tenant ON audit_logs FOR SELECT TO audit_reader "
        "USING (tenant_id = NULLIF(current_setting('app.current_tenant', true), '')::uuid)"
    )


def downgrade() -> None:
    """Drop the policies and grants; the roles stay (other databases may use them)."""
    op.execute("DROP POLICY IF EXISTS audit_logs_reader_tenant ON audit_logs")
    op.execute("DROP POLICY IF EXISTS audit_logs_writer_conflicts ON audit_logs")
    op.execute("DROP POLICY IF EXISTS audit_logs_writer_insert ON audit_logs")
    op.execute("ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE audit_logs DISABLE ROW LEVEL SECURITY")
    op.execute("REVOKE SELECT ON audit_logs FROM audit_reader")
    op.execute("REVOKE SELECT ON alembic_version FROM audit_writer")
    op.execute("REVOKE SELECT (idempotency_key) ON audit_logs FROM audit_writer")
    op.execute("REVOKE INSERT ON audit_logs FROM audit_writer")
    op.execute("REVOKE USAGE ON SCHEMA public FROM audit_writer, audit_reader")
