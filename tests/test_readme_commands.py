"""The README's commands, run as a new user types them, on a fresh copy of the project.

Each `make run` mode the README promises is started in a terminal of its own, gets a
real event, shows its row, and is stopped with Ctrl-C. "External" servers are real
nats-server and PostgreSQL processes started here, standing in for the user's own.

Not run here, and why:
- `docker compose up --build` and `docker compose --profile sample up publisher`: no
  container engine on this machine; tests/test_deployment_files.py checks their wiring.
- `nats consumer edit|rm` (runbook): the `nats` CLI is the operator's own tool, not the
  project's; the durable's behaviour it relies on is shown in tests/faults/.
- `make test`: it is the run this module is part of (`.ci/run` calls it); `make lint`:
  `.ci/run` calls it before `make test`.
"""

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from sqlalchemy.engine import make_url

from service.dev.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from service.dev.openbao import EmbeddedOpenBao
from service.dev.publisher import SAMPLE_TENANTS, ensure_publisher_stream
from tests.service_process import wait_for
from tests.session_events import session_end, subject_of, wire
from tests.terminal import Terminal

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The project as a fresh clone has it: tracked files, no .data/; the installed venv."""
    target = tmp_path / "session-audit"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = PROJECT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)  # mtimes kept: `make install` stays a no-op
    # Installing is `make`'s first step and is shown by .ci/run on its clean clone; here
    # the clone shares the installed environment instead of downloading it again.
    for installed in (".venv", ".tools"):
        (target / installed).symlink_to(PROJECT / installed)
    return target


def user_env(**settings: str) -> dict[str, str]:
    """A login shell's environment plus the settings a user exported: nothing of this run."""
    keep = ("PATH", "HOME", "LANG", "TERM", "USER", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    return env | {"HTTP_PORT": str(free_port())} | settings


@pytest.fixture
def users_nats(tmp_path: Path) -> Iterator[str]:
    """A NATS with JetStream the user already runs, with the relay's stream on it."""
    with EmbeddedNats(tmp_path / "users-nats") as server:
        asyncio.run(ensure_publisher_stream(server.url, "DEVICE_EVENTS"))
        yield server.url


@pytest.fixture
def users_postgres(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL the user already runs, with an empty database for the service."""
    with EmbeddedPostgres(tmp_path / "users-postgres") as server:
        server.create_database("audit")
        yield server.url("audit")


def endpoints(clone: Path) -> dict[str, str]:
    """What `make run` wrote to .data/endpoints.env for the tools beside it."""
    text = (clone / ".data" / "endpoints.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def owner_dsn(database_url: str) -> str:
    """The stack's database as its owner, to look at rows the writer may not read."""
    url = make_url(database_url)
    if url.username == "session_audit":  # make run's insert-only login on its own server
        url = url.set(username="postgres", password=None)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def started(clone: Path, env: dict[str, str]) -> Terminal:
    """`make run` in a terminal, returned once /readyz says ready."""
    terminal = Terminal(["make", "run"], cwd=clone, env=env)
    base = f"http://127.0.0.1:{env['HTTP_PORT']}"

    def ready() -> bool:
        if terminal.proc.poll() is not None:
            raise AssertionError(f"make run exited {terminal.proc.returncode}:\n{terminal.output}")
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=120, what=f"make run to be ready:\n{terminal.output}")
    except BaseException:
        terminal.close()
        raise
    return terminal


async def publish_and_find_row(nats_url: str, database_url: str) -> dict[str, object]:
    """Publish one real event to the stack and return its audit row once committed.

    Its tenant is one whose data key `make run` created in the OpenBao it started.
    """
    event = session_end(tenant_id=SAMPLE_TENANTS[0])
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(subject_of(event), wire(event))
    finally:
        await nc.close()
    conn = await asyncpg.connect(owner_dsn(database_url))
    try:
        for _ in range(200):
            row = await conn.fetchrow(
                "SELECT action, resource_id, details::text, encrypted_details FROM audit_logs "
                "WHERE idempotency_key = $1",
                f"ssh_session_end:{event['session_id']}",
            )
            if row is not None:
                return dict(row) | {"session_id": event["session_id"]}
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"no row for session {event['session_id']}")


def decrypted(clone: Path, openbao_addr: str, ciphertext: str) -> bytes:
    """Decrypt as the platform's audit API would, with the stack's root token."""
    root = json.loads((clone / ".data" / "openbao" / "init.json").read_text())["root_token"]
    answer = httpx.post(
        f"{openbao_addr}/v1/transit/decrypt/tenant_{SAMPLE_TENANTS[0]}_data",
        json={"ciphertext": ciphertext},
        headers={"X-Vault-Token": root},
        timeout=10,
    )
    answer.raise_for_status()
    return base64.b64decode(answer.json()["data"]["plaintext"])


def stops_cleanly_on_ctrl_c(terminal: Terminal) -> None:
    """Ctrl-C ends `make run` with status 0, without make reporting an error."""
    code = terminal.ctrl_c()
    assert code == 0, terminal.output
    assert "Error" not in terminal.output, terminal.output
    assert "Traceback" not in terminal.output, terminal.output
    assert "shut down gracefully" in terminal.output


def make(clone: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One `make` command beside the stack, as typed in a second terminal."""
    return subprocess.run(
        ["make", *args], cwd=clone, env=env, capture_output=True, text=True, timeout=180
    )


def test_make_run_embedded_serves_rows_samples_dead_letters_and_docs(clone: Path) -> None:
    env = user_env()
    terminal = started(clone, env)
    try:
        stack = endpoints(clone)
        row = asyncio.run(publish_and_find_row(stack["NATS_URL"], stack["DATABASE_URL"]))
        assert row["action"] == "ssh_session_end"
        # Encrypted with the tenant's data key in the OpenBao that make run started.
        assert f"OpenBao   {stack['OPENBAO_ADDR']}" in terminal.output
        assert row["details"] == "{}"
        details = json.loads(decrypted(clone, stack["OPENBAO_ADDR"], str(row["encrypted_details"])))
        assert details["session_id"] == row["session_id"]

        # The second terminal of the README: no settings exported, the stack found by itself.
        beside = user_env()
        sample = make(clone, "publish-sample", "COUNT=5", "ARGS=--poison", env=beside)
        assert sample.returncode == 0, sample.stdout + sample.stderr
        assert "messages published to nats://127.0.0.1:" in sample.stdout

        def dead_letters_listed() -> bool:
            listed = make(clone, "dlq", "ARGS=list", env=beside)
            assert listed.returncode in (0, 1), listed.stdout + listed.stderr
            return "invalid_json" in listed.stdout and "subject_mismatch" in listed.stdout

        wait_for(dead_letters_listed, timeout=30, what="make dlq ARGS=list to show dead letters")

        base = f"http://127.0.0.1:{env['HTTP_PORT']}"
        ready = subprocess.run(
            ["curl", "-s", f"{base}/readyz"], capture_output=True, text=True, check=True
        )
        assert json.loads(ready.stdout)["status"] == "ready"
        docs = httpx.get(f"{base}/docs/asyncapi", timeout=5)
        assert docs.status_code == 200
        assert "<html" in docs.text.lower()

        def verified() -> bool:  # once the samples are written and their seals anchored
            done = make(clone, "verify", env=beside)
            assert done.returncode in (0, 1), done.stdout + done.stderr
            return done.returncode == 0 and "anchor read through seal" in done.stdout

        wait_for(verified, timeout=30, what="make verify to find the trail intact")
    finally:
        stops_cleanly_on_ctrl_c(terminal)
    assert not (clone / ".data" / "endpoints.env").exists()  # no stale endpoints left behind


def test_make_run_with_external_nats_and_embedded_postgres(clone: Path, users_nats: str) -> None:
    terminal = started(clone, user_env(NATS_URL=users_nats))
    try:
        stack = endpoints(clone)
        assert stack["NATS_URL"] == users_nats
        asyncio.run(publish_and_find_row(users_nats, stack["DATABASE_URL"]))
    finally:
        stops_cleanly_on_ctrl_c(terminal)


def test_make_run_with_external_postgres_and_embedded_nats(
    clone: Path, users_postgres: str
) -> None:
    terminal = started(clone, user_env(DATABASE_URL=users_postgres))
    try:
        stack = endpoints(clone)
        asyncio.run(publish_and_find_row(stack["NATS_URL"], users_postgres))
    finally:
        stops_cleanly_on_ctrl_c(terminal)


def test_make_run_with_both_servers_external(
    clone: Path, users_nats: str, users_postgres: str
) -> None:
    # The trial that once crashed: no .data/ at all before make run starts.
    assert not (clone / ".data").exists()
    terminal = started(clone, user_env(NATS_URL=users_nats, DATABASE_URL=users_postgres))
    try:
        asyncio.run(publish_and_find_row(users_nats, users_postgres))
        listed = make(clone, "dlq", "ARGS=list", env=user_env(NATS_URL=users_nats))
        assert listed.returncode in (0, 1), listed.stdout + listed.stderr
    finally:
        stops_cleanly_on_ctrl_c(terminal)


def test_make_run_with_the_users_openbao_encrypts_with_its_keys_and_starts_none(
    clone: Path, tmp_path: Path
) -> None:
    with EmbeddedOpenBao(tmp_path / "users-openbao") as bao:
        # What the user's platform has done: the tenant's data key, the service's token.
        bao.ensure_data_key(uuid.UUID(SAMPLE_TENANTS[0]))
        token = bao.service_token_file(tmp_path / "service.token")
        env = user_env(OPENBAO_ADDR=bao.url, OPENBAO_TOKEN_FILE=str(token))
        terminal = started(clone, env)
        try:
            stack = endpoints(clone)
            assert f"OpenBao   {bao.url}" in terminal.output
            row = asyncio.run(publish_and_find_row(stack["NATS_URL"], stack["DATABASE_URL"]))
            answer = bao.as_root(
                "POST",
                f"transit/decrypt/tenant_{SAMPLE_TENANTS[0]}_data",
                {"ciphertext": row["encrypted_details"]},
            )
            details = json.loads(base64.b64decode(answer["data"]["plaintext"]))
            assert details["session_id"] == row["session_id"]
        finally:
            stops_cleanly_on_ctrl_c(terminal)
    assert not (clone / ".data" / "openbao").exists()


def test_make_migrate_then_faststream_run_serves_an_empty_database(
    clone: Path, users_nats: str, users_postgres: str
) -> None:
    env = user_env(NATS_URL=users_nats, DATABASE_URL=users_postgres)
    for _ in range(2):  # repeatable
        done = make(clone, "migrate", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    head = subprocess.run(
        [".venv/bin/alembic", "heads"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert asyncio.run(_schema_revision(users_postgres)) == head

    # "in the project's .venv": the user activated it, so faststream is on PATH; and
    # `--port` overrides HTTP_PORT for one run, as the README says.
    env["PATH"] = f"{clone / '.venv' / 'bin'}:{env['PATH']}"
    port = free_port()
    command = ["faststream", "run", "service.main:app", "--port", str(port)]
    # Without a signing key the service does not start, and says what to set.
    refused = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "configuration error: TRAIL_SIGNING_KEY_FILE: " in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    keygen = subprocess.run(
        ["python", "-m", "service", "trail", "keygen", "trail.seed"],
        cwd=clone, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert keygen.returncode == 0, keygen.stderr
    key_id = keygen.stdout.split()[-1]
    assert key_id.startswith("N"), keygen.stdout
    env["TRAIL_SIGNING_KEY_FILE"] = str(clone / "trail.seed")
    terminal = Terminal(command, cwd=clone, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: _answers(f"{base}/readyz"), timeout=60, what=f"readiness:\n{terminal.output}"
        )
        asyncio.run(publish_and_find_row(users_nats, users_postgres))
    finally:
        code = terminal.ctrl_c()
    assert code == 0, terminal.output
    assert terminal.output.count("database schema at revision") == 1, terminal.output

    # The auditor's side: a verifier login, then the trail checked with the trusted key.
    login = subprocess.run(
        ["python", "-m", "service", "create-login", "auditor", "--verifier"],
        cwd=clone, env=env, input="auditor-pw", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert "auditor: created in audit_verifier" in login.stdout
    auditor = make_url(users_postgres).set(username="auditor", password="auditor-pw")
    verify_env = env | {
        "DATABASE_URL": auditor.render_as_string(hide_password=False),
        "TRAIL_TRUSTED_KEYS": key_id,
    }
    verified = subprocess.run(
        ["python", "-m", "service", "trail", "verify"],
        cwd=clone, env=verify_env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("intact: seals 1..1 (1 seals, 1 rows)"), verified.stdout


async def _schema_revision(database_url: str) -> str:
    conn = await asyncpg.connect(owner_dsn(database_url))
    try:
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_make_docs_leaves_the_committed_document_unchanged(clone: Path) -> None:
    before = (clone / "docs" / "asyncapi.yaml").read_bytes()
    done = make(clone, "docs", env=user_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert (clone / "docs" / "asyncapi.yaml").read_bytes() == before


def test_make_help_lists_every_target_with_a_line(clone: Path) -> None:
    done = make(clone, "help", env=user_env())
    assert done.returncode == 0, done.stderr
    targets = {
        line.split(":", 1)[0]
        for line in (clone / "Makefile").read_text().splitlines()
        if line[:1].isalpha() and ":" in line and "## " in line
    }
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert targets == listed
    assert {"run", "test", "dlq", "publish-sample", "docs"} <= listed


def test_make_format_leaves_the_committed_code_unchanged(clone: Path) -> None:
    def code() -> dict[str, bytes]:
        return {
            str(path.relative_to(clone)): path.read_bytes()
            for folder in ("service", "tests", "migrations", "bench")
            for path in (clone / folder).rglob("*.py")
        }

    before = code()
    done = make(clone, "format", env=user_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert code() == before


def test_make_dlq_without_a_stack_or_nats_says_so_in_one_line(clone: Path) -> None:
    unused = f"nats://127.0.0.1:{free_port()}"
    done = make(clone, "dlq", "ARGS=list", env=user_env(NATS_URL=unused))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr  # its line and make's


# Where each command the README shows is run as typed. A command added to the README
# without a place here fails the test below: a README command with no test is a defect.
EMBEDDED = "test_make_run_embedded_serves_rows_samples_dead_letters_and_docs"
RUN_BY = {
    "make run": EMBEDDED,
    "make test": "NOT RUN HERE: it is the run this test is part of (.ci/run calls it)",
    "make help": "test_make_help_lists_every_target_with_a_line",
    "make publish-sample": EMBEDDED,
    "make dlq": EMBEDDED,
    "make verify": EMBEDDED,
    "make migrate": "test_make_migrate_then_faststream_run_serves_an_empty_database",
    "make docs": "test_make_docs_leaves_the_committed_document_unchanged",
    "make format": "test_make_format_leaves_the_committed_code_unchanged",
    "make lint": "NOT RUN HERE: .ci/run calls it before make test",
    "make bench": "tests/test_bench_smoke.py",
    "curl -s": EMBEDDED,
    "open http://localhost:8000/docs/asyncapi": EMBEDDED,
    "faststream run": "test_make_migrate_then_faststream_run_serves_an_empty_database",
    "python -m service dlq": "tests/test_dlq_tool.py",
    "python -m service create-login": "tests/test_create_login.py",
    "python -m service trail": "test_make_migrate_then_faststream_run_serves_an_empty_database",
    "docker compose": "NOT RUN HERE: no container engine; tests/test_deployment_files.py",
    "nats consumer": "NOT RUN HERE: the operator's nats CLI; the durable's rules: tests/faults",
    "pytest -m": "NOT RUN HERE: part of make test",
}


def readme_commands() -> set[str]:
    """Each command the README shows, by its first words, in code blocks and inline."""
    text = (PROJECT / "README.md").read_text()
    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        for line in block.splitlines()
    ]
    lines += re.findall(
        r"`((?:make|faststream|python -m|docker|nats|pytest|curl|open) [^`]*)`", text
    )
    lines += re.findall(r"printf[^|`]*\| (python -m service [^`]*)`", text)
    found = set()
    for line in filter(None, lines):
        words = line.replace("\n", " ").split()
        size = 4 if words[:2] == ["python", "-m"] else 2
        found.add(" ".join(words[:size]))
    return found


def test_every_readme_command_is_run_by_a_test_or_says_why_not() -> None:
    shown = readme_commands()
    assert shown, "no commands found in the README"
    unmapped = {command for command in shown if command not in RUN_BY}
    assert not unmapped, f"README commands with no test: {sorted(unmapped)}"
    here = Path(__file__).read_text()
    for command, where in RUN_BY.items():
        if where.startswith("test_"):  # a test of this module
            assert f"def {where}(" in here, (command, where)
        elif where.startswith("tests/"):
            assert (PROJECT / where).exists(), (command, where)
