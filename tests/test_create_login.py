"""`python -m service create-login`: the writer login the service should run as."""

import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

PROJECT = Path(__file__).resolve().parents[1]


def _create(database_url: str, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "create-login", *args],
        cwd=PROJECT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_created_writer_login_may_insert_but_not_change_rows(
    database_url: str, db: asyncpg.Connection
) -> None:
    name = f"writer_{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    try:
        done = _create(database_url, name, stdin=password + "\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{name}: created in audit_writer"
        again = _create(database_url, name, stdin=password + "\n")
        assert again.stdout.strip() == f"{name}: already exists; not changed, audit_writer"

        member_of = await db.fetchval(
            "SELECT array_agg(b.rolname) FROM pg_auth_members m "
            "JOIN pg_roles r ON r.oid = m.member JOIN pg_roles b ON b.oid = m.roleid "
            "WHERE r.rolname = $1",
            name,
        )
        assert member_of == ["audit_writer"]
        url = make_url(database_url).set(drivername="postgresql", username=name, password=password)
        writer = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            await writer.execute(
                "INSERT INTO audit_logs (tenant_id, action, resource_type, resource_id) "
                "VALUES (gen_random_uuid(), 'ssh_session_end', 'device', 'x')"
            )
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await writer.execute("DELETE FROM audit_logs")
        finally:
            await writer.close()
        assert await db.fetchval("SELECT count(*) FROM audit_logs") == 1
    finally:
        await db.execute(f'DROP OWNED BY "{name}"')
        await db.execute(f'DROP ROLE IF EXISTS "{name}"')
