"""The operator's dead-letter tool, `python -m service dlq …`, against the run's nats-server.

Each test gets a dead-letter stream of its own, on subjects no other stream uses (the DLQ
subjects `audit.dlq.session.end.>` can belong to one stream per server, and the service's
tests need them), and points the tool at it the way an operator does: DLQ_STREAM. The tool
never looks at a DLQ's subjects, only at its name. Whatever a test replays is a valid event,
so a service that later consumes DEVICE_EVENTS from the start only writes rows for it.
"""

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

import service.__main__
from service.__main__ import main
from service.config import Settings, get_settings
from service.deadletters.store import list_dead_letters
from service.dev.embedded import free_port
from tests.integration_support import session_event
from tests.security.servers import nats_server
from tests.service_process import PROJECT, ServiceProcess

STREAM = "DEVICE_EVENTS"


@dataclass
class Scratch:
    """A dead-letter stream of one test, and settings that point the tool at it."""

    js: JetStreamContext
    name: str
    token: str
    settings: Settings

    async def seed(
        self,
        payload: bytes,
        *,
        reason: str = "database_refused",
        detail: str = "row refused: value too long",
        session_id: str | None = None,
    ) -> tuple[int, str]:
        """Store a dead letter as the service does; its DLQ sequence and original subject."""
        session_id = session_id or str(uuid.uuid4())
        original = f"audit.session.end.{session_id}"
        headers = {
            "Audit-Dlq-Reason": reason,
            "Audit-Dlq-Detail": detail,
            "Audit-Original-Subject": original,
            "Audit-Original-Stream": STREAM,
            "Audit-Original-Sequence": "4242",
            "Audit-Deliveries": "3",
            "Audit-Failed-At": "2026-03-12T21:43:00.125Z",
            "Nats-Msg-Id": f"dlq:{STREAM}:{uuid.uuid4()}",
        }
        subject = f"dlqtool.{self.token}.{session_id}"
        ack = await self.js.publish(subject, payload, stream=self.name, headers=headers)
        return ack.seq, original

    async def seed_event(self, **overrides: str) -> tuple[int, str, bytes]:
        """A valid event that was dead-lettered: DLQ sequence, original subject, its bytes."""
        event = session_event(**overrides)
        payload = json.dumps(event).encode()
        sequence, original = await self.seed(payload, session_id=event["session_id"])
        return sequence, original, payload

    async def sequences(self) -> set[int]:
        """The sequences the stream still holds."""
        info = await self.js.stream_info(self.name)
        found = set()
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            with suppress(NotFoundError):
                found.add((await self.js.get_msg(self.name, sequence)).seq or 0)
        return found


@pytest.fixture
async def scratch(js: JetStreamContext, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Scratch]:
    """A fresh DLQ stream; `main` of this process reads settings that name it."""
    token = uuid.uuid4().hex[:8]
    name = f"DLQTOOL_{token}"
    await js.add_stream(api.StreamConfig(name=name, subjects=[f"dlqtool.{token}.>"], max_age=3600))
    settings = get_settings().model_copy(update={"dlq_stream": name})
    monkeypatch.setattr(service.__main__, "get_settings", lambda: settings)
    try:
        yield Scratch(js, name, token, settings)
    finally:
        for stream in (name, f"KV_{name}_REPLAYED"):
            with suppress(NotFoundError):
                await js.delete_stream(stream)


@dataclass(frozen=True)
class Run:
    """What one command did: exit status, stdout, stderr."""

    code: int
    out: str
    err: str


Cli = Callable[..., Awaitable[Run]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `python -m service dlq ARGS` in this process (in a thread: it runs its own loop)."""

    async def run(*args: str) -> Run:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["dlq", *args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


async def python_m_service(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m service ARGS` as a child process with these environment overrides."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", *args],
        cwd=PROJECT,
        env=os.environ | env,
        capture_output=True,
        timeout=60,
    )


def row_of(out: str, sequence: int) -> str:
    """The list row of one DLQ sequence."""
    return next(line for line in out.splitlines() if line.split()[0] == str(sequence))


async def test_list_shows_each_dead_letter_and_counts_by_reason(scratch: Scratch, cli: Cli) -> None:
    bad_json, bad_json_subject = await scratch.seed(b"{not json", reason="invalid_json")
    field, field_subject = await scratch.seed(
        b"{}", reason="invalid_field", detail="end_time: must be an RFC 3339 time with an offset"
    )
    other, _ = await scratch.seed(b"{}", reason="invalid_field")

    run = await cli("list")

    assert run.code == 0, run.err
    header, *rows, last = run.out.splitlines()
    assert header.split()[:3] == ["SEQ", "FAILED", "AT"]
    assert [int(row.split()[0]) for row in rows] == [bad_json, field, other]
    assert row_of(run.out, field).split()[:7] == [
        str(field), "2026-03-12T21:43:00.125Z", "invalid_field", field_subject,
        f"{STREAM}:4242", "3", "no",
    ]  # fmt: skip
    assert "end_time: must be an RFC 3339 time" in row_of(run.out, field)
    assert last == "3 dead letters, 0 replayed: invalid_field 2, invalid_json 1"

    run = await cli("list", "--reason", "invalid_json")
    assert [line.split()[0] for line in run.out.splitlines()[1:-1]] == [str(bad_json)]
    assert run.out.splitlines()[-1] == "1 of 3 dead letters match, 0 replayed: invalid_json 1"

    run = await cli("list", "--subject", bad_json_subject.rsplit(".", 1)[1].upper())
    assert [line.split()[0] for line in run.out.splitlines()[1:-1]] == [str(bad_json)]

    run = await cli("list", "--limit", "1")
    assert len(run.out.splitlines()) == 3
    assert run.out.splitlines()[-1].endswith("(first 1 shown)")


async def test_list_of_an_empty_stream_says_so(scratch: Scratch, cli: Cli) -> None:
    assert await cli("list") == Run(0, "no dead letters\n", "")
    await scratch.seed(b"{}", reason="invalid_json")
    run = await cli("list", "--reason", "too_large")
    assert (run.code, run.out) == (0, "no dead letters match (1 dead letter in all)\n")


async def test_list_cuts_the_detail_to_fit_the_terminal(
    scratch: Scratch, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    await scratch.seed(b"{}", reason="invalid_field", detail="start_time: " + "x" * 500)
    monkeypatch.setenv("COLUMNS", "190")
    row = (await cli("list")).out.splitlines()[1]
    assert len(row) == 190
    assert row.endswith("…")
    assert "start_time: xxx" in row


async def test_show_pretty_prints_json_and_escapes_what_a_terminal_would_obey(
    scratch: Scratch, cli: Cli
) -> None:
    event = session_event(source_ip="\x1b[2J\u202eevil")
    as_json, _ = await scratch.seed(json.dumps(event).encode(), detail="source_ip: \x1b[31mred\x07")
    text = b"{not json \x1b]0;title\x07"
    as_text, _ = await scratch.seed(text, reason="invalid_json")
    as_binary, _ = await scratch.seed(bytes(range(256)) * 2, reason="invalid_json")

    run = await cli("show", str(as_json))
    assert run.code == 0, run.err
    assert not any(c in run.out for c in "\x1b\x07\u202e")
    assert f"dead letter {as_json} in {scratch.name}" in run.out
    for header in (
        "Audit-Dlq-Reason: database_refused",
        "Audit-Dlq-Detail: source_ip: \\x1b[31mred\\x07",
        f"Audit-Original-Stream: {STREAM}",
        "Audit-Original-Sequence: 4242",
        "Audit-Deliveries: 3",
        "Audit-Failed-At: 2026-03-12T21:43:00.125Z",
        "Nats-Msg-Id: dlq:",
    ):
        assert header in run.out
    payload = run.out.split("bytes, JSON):\n", 1)[1]
    assert payload.startswith("{\n")
    assert f'  "session_id": "{event["session_id"]}",' in payload
    assert '"source_ip": "\\u001b[2J\\u202eevil"' in payload

    run = await cli("show", str(as_text))
    assert f"({len(text)} bytes, text):\n{{not json \\x1b]0;title\\x07\n" in run.out

    run = await cli("show", str(as_binary))
    assert "(512 bytes, binary):" in run.out
    assert (
        "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  |................|" in run.out
    )
    assert (
        "00000040  40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f  |@ABCDEFGHIJKLMNO|" in run.out
    )
    assert not any(chr(c) in run.out for c in range(32) if chr(c) != "\n")


async def test_unknown_sequence_is_an_error_and_replays_nothing(
    scratch: Scratch, cli: Cli, js: JetStreamContext
) -> None:
    known, original, _ = await scratch.seed_event()

    for args in (["show", "999999"], ["replay", str(known), "999999"]):
        run = await cli(*args)
        assert run.code == 2
        assert run.out == ""
        assert run.err == (
            f"no dead letter 999999 in {scratch.name}: it holds 1 between {known} and {known} "
            "(dlq list shows them)\n"
        )
    with pytest.raises(NotFoundError):
        await js.get_last_msg(STREAM, original)


async def test_replay_republishes_the_original_bytes_and_marks_them(
    scratch: Scratch, cli: Cli, js: JetStreamContext
) -> None:
    first, first_subject, first_bytes = await scratch.seed_event()
    second, second_subject, second_bytes = await scratch.seed_event()

    run = await cli("replay", str(first), str(second))

    assert run.code == 0, run.err
    for sequence, subject, payload in (
        (first, first_subject, first_bytes),
        (second, second_subject, second_bytes),
    ):
        republished = await js.get_last_msg(STREAM, subject)
        assert republished.data == payload
        assert (republished.headers or {})["Audit-Replay-Of"] == f"{scratch.name}:{sequence}"
        assert f"replayed {sequence} to {subject} ({STREAM}:{republished.seq})\n" in run.out
    assert run.out.endswith(f"replayed 2 of 2 dead letters to {STREAM}\n")
    marks = await js.key_value(f"{scratch.name}_REPLAYED")
    assert sorted(await marks.keys()) == sorted([str(first), str(second)])
    assert "no" not in row_of((await cli("list")).out, first).split()[:7]

    last_seq = (await js.get_last_msg(STREAM, first_subject)).seq
    run = await cli("replay", str(first))
    assert run.code == 0
    assert f"skipped {first}: already replayed at " in run.out
    assert run.out.endswith(
        f"replayed 0 of 1 dead letter to {STREAM}; 1 already replayed, skipped\n"
    )
    assert (await js.get_last_msg(STREAM, first_subject)).seq == last_seq

    run = await cli("replay", str(first), "--again")
    again = await js.get_last_msg(STREAM, first_subject)
    assert (again.seq or 0) > (last_seq or 0)
    assert again.data == first_bytes
    assert f"replayed {first} to {first_subject} ({STREAM}:{again.seq}), again:" in run.out


async def test_replay_by_reason_dry_run_and_a_selector_that_matches_nothing(
    scratch: Scratch, cli: Cli, js: JetStreamContext
) -> None:
    sequence, subject, _ = await scratch.seed_event()
    await scratch.seed(b"{not json", reason="invalid_json")

    run = await cli("replay", "--reason", "database_refused", "--dry-run")
    assert run.code == 0
    assert run.out == (
        f"would replay {sequence} to {subject}\nwould replay 1 of 1 dead letter to {STREAM}\n"
    )
    with pytest.raises(NotFoundError):
        await js.get_last_msg(STREAM, subject)
    assert "no" in row_of((await cli("list")).out, sequence).split()

    run = await cli("replay", "--reason", "subject_mismatch")
    assert run.code == 1
    assert (
        run.err
        == f"no dead letters with reason subject_mismatch in {scratch.name}: nothing to replay\n"
    )

    run = await cli("replay", "--all", str(sequence))
    assert run.code == 2
    assert run.err == "dlq replay: give SEQ ..., --reason R or --all (exactly one)\n"


async def test_purge_deletes_exactly_the_replayed_dead_letters(
    scratch: Scratch, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    replayed = [(await scratch.seed_event())[0] for _ in range(12)]
    kept = [(await scratch.seed(b"{not json", reason="invalid_json"))[0] for _ in range(2)]
    run = await cli("replay", "--reason", "database_refused")
    assert "replayed 12/12" in run.err.splitlines()  # progress of a long run, on stderr

    run = await cli("purge", "--replayed")  # stdin is no terminal under pytest
    assert run.code == 2
    assert run.err == "refusing to delete without --yes: stdin is not a terminal to ask on\n"
    assert f"12 replayed dead letters would be deleted from {scratch.name}" in run.out
    assert await scratch.sequences() == {*replayed, *kept}

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    run = await cli("purge", "--replayed")
    assert (run.code, run.err) == (1, "delete them? [y/N] nothing deleted\n")
    assert await scratch.sequences() == {*replayed, *kept}

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    run = await cli("purge", "--replayed")
    assert run.code == 0, run.err
    assert "deleted 12/12" in run.err
    assert run.out.endswith(f"deleted 12 replayed dead letters from {scratch.name}\n")
    assert await scratch.sequences() == set(kept)

    run = await cli("purge", "--replayed", "--yes")
    assert run.out == f"no replayed dead letters in {scratch.name}: nothing to purge\n"


async def test_purge_all_empties_the_stream_and_forgets_the_replays(
    scratch: Scratch, cli: Cli, js: JetStreamContext
) -> None:
    replayed, _, _ = await scratch.seed_event()
    await scratch.seed(b"{not json", reason="invalid_json")
    await cli("replay", str(replayed))

    run = await cli("purge", "--all", "--yes")

    assert run.out == f"deleted 2 dead letters from {scratch.name}\n"
    assert (await js.stream_info(scratch.name)).state.messages == 0
    with pytest.raises(NotFoundError):
        await js.stream_info(f"KV_{scratch.name}_REPLAYED")


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["replay"], ["purge"]])
def test_help_says_what_each_command_does(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["dlq", *command, "--help"])
    assert exit_.value.code == 0
    description = capsys.readouterr().out.split("\n\n")[1]
    assert description.endswith(".")
    assert len(description.split()) >= 10


async def test_python_m_service_lists_and_writes_the_raw_bytes(scratch: Scratch) -> None:
    payload = b"\x00\xff binary \x1b["
    sequence, original = await scratch.seed(payload, reason="invalid_json")

    listed = await python_m_service("dlq", "list", DLQ_STREAM=scratch.name)
    assert listed.returncode == 0, listed.stderr
    assert original in row_of(listed.stdout.decode(), sequence)

    raw = await python_m_service("dlq", "show", str(sequence), "--raw", DLQ_STREAM=scratch.name)
    assert (raw.returncode, raw.stdout) == (0, payload)


async def test_a_missing_stream_is_one_line_and_exit_2(nats_url: str) -> None:
    name = f"NO_SUCH_DLQ_{uuid.uuid4().hex[:8]}"
    run = await python_m_service("dlq", "list", DLQ_STREAM=name)
    assert run.returncode == 2
    assert run.stdout == b""
    assert run.stderr.decode() == (
        f"no dead-letter stream {name} on {nats_url}: nothing has been dead-lettered yet, "
        "or DLQ_STREAM names another stream\n"
    )


async def test_unreachable_nats_names_the_setting_and_hides_the_password() -> None:
    url = f"nats://ops:s3cret@127.0.0.1:{free_port()}"
    run = await python_m_service("dlq", "list", NATS_URL=url)
    assert run.returncode == 2
    [line] = run.stderr.decode().splitlines()
    assert line.startswith(
        f"cannot connect to NATS at NATS_URL={url.replace('s3cret', '***')}: "
        "nats: no servers available for connection (",
    )
    assert "Connect call failed" in line
    assert "s3cret" not in line


async def test_the_tool_authenticates_as_the_service_does(tmp_path: Path) -> None:
    password = "correct horse battery staple"
    config = f'authorization {{ user: "operator", password: "{password}" }}'
    async with nats_server(tmp_path / "nats", config) as server:
        nc = await nats.connect(server.url, user="operator", password=password)
        try:
            await nc.jetstream().add_stream(name="AUDIT_DLQ", subjects=["audit.dlq.>"])
        finally:
            await nc.close()
        env = {"NATS_URL": server.url, "DLQ_STREAM": "AUDIT_DLQ", "NATS_USER": "operator"}

        run = await python_m_service("dlq", "list", **env, NATS_PASSWORD=password)
        assert (run.returncode, run.stdout) == (0, b"no dead letters\n"), run.stderr

        run = await python_m_service("dlq", "list", **env, NATS_PASSWORD="guessed")
        assert run.returncode == 2
        assert len(run.stderr.decode().splitlines()) == 1
        assert run.stderr.decode().startswith(f"cannot connect to NATS at NATS_URL={server.url}: ")
        assert b"guessed" not in run.stderr


async def _dlq_stream_for_the_service(js: JetStreamContext) -> tuple[str, bool]:
    # One stream per server can hold the DLQ subjects; the service binds to it if it exists.
    try:
        return await js.find_stream_name_by_subject("audit.dlq.session.end.x"), False
    except NotFoundError:
        return f"DLQTOOL_E2E_{uuid.uuid4().hex[:8]}", True


async def test_a_replayed_dead_letter_becomes_one_row_once_its_cause_is_fixed(
    tmp_path: Path, js: JetStreamContext, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq_stream, ours = await _dlq_stream_for_the_service(js)
    durable = f"dlqtool-{uuid.uuid4().hex[:8]}"
    # Only what this test publishes: the stream holds every other test's events too.
    await js.add_consumer(
        STREAM,
        api.ConsumerConfig(
            durable_name=durable,
            deliver_policy=api.DeliverPolicy.NEW,
            filter_subject="audit.session.end.*",
            ack_policy=api.AckPolicy.EXPLICIT,
            max_deliver=-1,
        ),
    )
    settings = get_settings().model_copy(update={"dlq_stream": dlq_stream})
    monkeypatch.setattr(service.__main__, "get_settings", lambda: settings)
    env = {"DURABLE": durable, "DLQ_STREAM": dlq_stream}
    event = session_event() | {"padding": "x" * 400}  # valid, but over a 512-byte limit
    count_rows = "SELECT count(*) FROM audit_logs WHERE details->>'session_id' = $1"

    async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
        try:
            async with asyncio.timeout(30):
                # Polling: the state lives in another process, nothing to await on.
                while True:
                    if await condition():
                        return
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    try:
        with ServiceProcess(tmp_path / "strict.log", MAX_PAYLOAD_BYTES="512", **env) as strict:
            await asyncio.to_thread(strict.wait_ready)
            await js.publish(f"audit.session.end.{event['session_id']}", json.dumps(event).encode())

            async def dead_lettered() -> bool:
                found = await list_dead_letters(settings, subject=event["session_id"])
                return bool(found.letters)

            await wait_for(dead_lettered, "the dead letter")
        letter = (await list_dead_letters(settings, subject=event["session_id"])).letters[0]
        assert letter.reason == "too_large"
        assert await db.fetchval(count_rows, event["session_id"]) == 0

        # The operator raises MAX_PAYLOAD_BYTES (default again) and replays, twice.
        with ServiceProcess(tmp_path / "fixed.log", **env) as fixed:
            await asyncio.to_thread(fixed.wait_ready)
            run = await asyncio.to_thread(main, ["dlq", "replay", str(letter.sequence)])
            assert run == 0

            async def has_row() -> bool:
                return bool(await db.fetchval(count_rows, event["session_id"]) == 1)

            await wait_for(has_row, "the row")
            again = ["dlq", "replay", "--again", str(letter.sequence)]
            assert await asyncio.to_thread(main, again) == 0
            second = (await js.get_last_msg(STREAM, f"audit.session.end.{event['session_id']}")).seq

            async def consumed() -> bool:
                info = await js.consumer_info(STREAM, durable)
                return (info.ack_floor.stream_seq or 0) >= (second or 0)

            await wait_for(consumed, "the second replay to be consumed")
            assert await db.fetchval(count_rows, event["session_id"]) == 1
    finally:
        with suppress(NotFoundError):
            await js.delete_consumer(STREAM, durable)
        with suppress(NotFoundError):
            await js.delete_stream(f"KV_{dlq_stream}_REPLAYED")
        if ours:  # so that the service's own tests can create theirs on these subjects
            with suppress(NotFoundError):
                await js.delete_stream(dlq_stream)
