"""trail: audit_seals, the signed hash chain over audit_logs, and the audit_verifier role

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Each batch the service commits appends one seal: seq (1, 2, 3 … without gaps), the previous
seal's hash, the ids, session ids and hashes of the rows it wrote, and an Ed25519 signature
over the seal's hash (docs/trail.md). The writer may add seals and read them (it reads the
chain's head under an advisory lock, and the anchoring task reads the seals it publishes);
it may change or remove nothing, here or in audit_logs. `python -m service trail verify`
runs as a login in audit_verifier: every tenant's rows and the seals, read-only.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create audit_seals and audit_verifier; grant the writer INSERT and SELECT on seals."""
    # A CHECK cannot hold a subquery; this looks at each element (bool_and skips NULLs, so a
    # NULL element makes its term false instead).
    op.execute(
        """
        CREATE FUNCTION audit_seal_hashes_valid(hashes bytea[]) RETURNS boolean
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        AS $$ SELECT coalesce(bool_and(h IS NOT NULL AND octet_length(h) = 32), false)
              FROM unnest(hashes) AS h $$
        """
    )
    op.execute(
        """
        CREATE TABLE audit_seals (
            seq         bigint PRIMARY KEY CHECK (seq >= 1),
            sealed_at   timestamptz NOT NULL,
            prev_hash   bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
            seal_hash   bytea NOT NULL UNIQUE CHECK (octet_length(seal_hash) = 32),
            key_id      text,
            signature   bytea CHECK (octet_length(signature) = 64),
            row_ids     uuid[] NOT NULL,
            session_ids uuid[] NOT NULL,
            row_hashes  bytea[] NOT NULL,
            CONSTRAINT audit_seals_signed_or_not CHECK ((key_id IS NULL) = (signature IS NULL)),
            CONSTRAINT audit_seals_one_entry_per_row CHECK (
                cardinality(row_ids) >= 1
                AND cardinality(session_ids) = cardinality(row_ids)
                AND cardinality(row_hashes) = cardinality(row_ids)
            ),
            CONSTRAINT audit_seals_row_hashes_32_bytes CHECK (audit_seal_hashes_valid(row_hashes))
        )
        """
    )
    # Ids and hashes do not compress: storing the arrays out of line uncompressed spares the
    # writer and the verifier a compression attempt that cannot succeed.
    for column in ("row_ids", "session_ids", "row_hashes"):
        op.execute(f"ALTER TABLE audit_seals ALTER COLUMN {column} SET STORAGE EXTERNAL")
    op.execute(
        "COMMENT ON TABLE audit_seals IS 'Signed hash chain over the audit_logs rows the "
        "service wrote: one seal per committed batch (docs/trail.md)'"
    )
    op.execute(
        """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_verifier') THEN
                CREATE ROLE audit_verifier NOLOGIN;
            END IF;
        END
        $$
        """
    )
    op.execute("GRANT INSERT, SELECT ON audit_seals TO audit_writer")
    op.execute("GRANT USAGE ON SCHEMA public TO audit_verifier")
    op.execute("GRANT SELECT ON audit_logs, audit_seals TO audit_verifier")
    # audit_logs has forced row-level security (0002): without a policy of its own the
    # verifier would see no row at all, and report every sealed row deleted.
    op.execute(
        "CREATE POLICY audit_logs_verifier_all ON audit_logs FOR SELECT TO audit_verifier "
        "USING (true)"
    )


def downgrade() -> None:
    """Drop the policy, grants and an empty audit_seals; the role stays."""
    # Seals are evidence, as the rows are: the downgrade stops rather than drop them.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM audit_seals) THEN
                RAISE EXCEPTION 'audit_seals holds seals; dropping it would lose the trail '
                    '(copy it away and empty it first if that is really meant)';
            END IF;
        END
        $$
        """
    )
    op.execute("DROP POLICY IF EXISTS audit_logs_verifier_all ON audit_logs")
    op.execute("REVOKE SELECT ON audit_logs FROM audit_verifier")
    op.execute("REVOKE USAGE ON SCHEMA public FROM audit_verifier")
    op.execute("DROP TABLE audit_seals")
    op.execute("DROP FUNCTION audit_seal_hashes_valid(bytea[])")
