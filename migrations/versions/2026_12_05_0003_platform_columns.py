"""audit_logs as the platform has it: encrypted_details, a varchar(45) ip_address, nullable resource

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

The platform's audit API selects `encrypted_details` and hands `ip_address` on as a string;
its own migrations make `ip_address varchar(45)`, `encrypted_details text` and leave
resource_type / resource_id nullable (its log_action writes rows without a resource). A
table 0001 created on an empty database differed in all three; this revision makes it
equal. On the platform's database every change below is already in place, so each one is
guarded: there no ALTER TABLE runs at all, and no lock is taken on the platform's table.

Converting an inet ip_address rewrites the table under an ACCESS EXCLUSIVE lock; that only
happens on a table 0001 created.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add encrypted_details, make ip_address varchar(45) and resource_* nullable, if not so."""
    # pg_attribute through 'audit_logs'::regclass: the table the search path finds, as for
    # every other statement of these migrations.
    op.execute(
        """
        DO $$
        DECLARE
            column_name text;
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_attribute
                           WHERE attrelid = 'audit_logs'::regclass
                             AND attname = 'encrypted_details' AND NOT attisdropped) THEN
                ALTER TABLE audit_logs ADD COLUMN encrypted_details text;
                COMMENT ON COLUMN audit_logs.encrypted_details
                    IS 'Transit-encrypted details JSON (vault:v1:...)';
            END IF;

            -- host() keeps the bare address: inet's own text form of 203.0.113.7 is
            -- 203.0.113.7/32, which is what a plain cast to varchar would store.
            IF (SELECT atttypid FROM pg_attribute
                WHERE attrelid = 'audit_logs'::regclass AND attname = 'ip_address'
                  AND NOT attisdropped) = 'inet'::regtype THEN
                ALTER TABLE audit_logs
                    ALTER COLUMN ip_address TYPE varchar(45) USING host(ip_address);
            END IF;

            FOREACH column_name IN ARRAY ARRAY['resource_type', 'resource_id'] LOOP
                IF (SELECT attnotnull FROM pg_attribute
                    WHERE attrelid = 'audit_logs'::regclass AND attname = column_name
                      AND NOT attisdropped) THEN
                    EXECUTE format('ALTER TABLE audit_logs ALTER COLUMN %I DROP NOT NULL',
                                   column_name);
                END IF;
            END LOOP;
        END
        $$
        """
    )


def downgrade() -> None:
    """On a table 0001 created, restore its columns; the platform's own table is left alone."""
    # The platform's table references tenants; the one 0001 creates references nothing.
    # Rows are evidence: the downgrade stops, naming the reason, rather than drop encrypted
    # details, or NULL an address or a resource that the old column types cannot hold.
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT FROM pg_constraint
                       WHERE conrelid = 'audit_logs'::regclass AND contype = 'f'
                         AND confrelid = to_regclass('tenants')) THEN
                RETURN;
            END IF;
            IF EXISTS (SELECT FROM audit_logs WHERE encrypted_details IS NOT NULL) THEN
                RAISE EXCEPTION 'audit_logs rows hold encrypted_details; dropping the column '
                    'would lose their details';
            END IF;
            IF EXISTS (SELECT FROM audit_logs
                       WHERE resource_type IS NULL OR resource_id IS NULL) THEN
                RAISE EXCEPTION 'audit_logs rows without resource_type or resource_id cannot '
                    'go back to NOT NULL columns';
            END IF;
            ALTER TABLE audit_logs DROP COLUMN encrypted_details;
            -- A value that is no address (the platform stores what it is given) stops the
            -- downgrade with invalid input syntax for type inet.
            ALTER TABLE audit_logs ALTER COLUMN ip_address TYPE inet USING ip_address::inet;
            ALTER TABLE audit_logs ALTER COLUMN resource_type SET NOT NULL;
            ALTER TABLE audit_logs ALTER COLUMN resource_id SET NOT NULL;
        END
        $$
        """
    )
