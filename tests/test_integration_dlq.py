"""Dead letters from the running service: one per bad message, never lost, never repeated."""

import json
import uuid
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from tests.integration_support import (
    DLQ_SUBJECT_PREFIX,
    consumer,
    dead_letters,
    drained,
    eventually,
    isolated,
    publish_event,
    publish_raw,
    rows_per_session,
    running_service,
    session_event,
    stream_exists,
    subject_of,
)


async def test_bad_messages_in_a_mixed_batch_become_one_dead_letter_each(
    tmp_path: Path, db: asyncpg.Connection, js: JetStreamContext
) -> None:
    good = [session_event() for _ in range(3)]
    bad_uuid = session_event(tenant_id="not-a-uuid")
    no_offset = session_event(end_time="2026-03-12T16:42:55")
    mismatched = session_event()
    oversize = session_event() | {"padding": "x" * 17_000}
    elsewhere = str(uuid.uuid4())
    # (subject, payload, reason, words the detail must name)
    bad: list[tuple[str, bytes, str, list[str]]] = [
        (subject_of(str(uuid.uuid4())), b"{not json", "invalid_json", ["not JSON"]),
        (subject_of(str(uuid.uuid4())), b'["an", "array"]', "not_an_object", ["list"]),
        (subject_of(bad_uuid["session_id"]), json.dumps(bad_uuid).encode(), "invalid_field",
         ["tenant_id", "not-a-uuid"]),
        (subject_of(no_offset["session_id"]), json.dumps(no_offset).encode(), "invalid_field",
         ["end_time", "offset"]),
        (subject_of(elsewhere), json.dumps(mismatched).encode(), "subject_mismatch",
         [elsewhere, mismatched["session_id"]]),
        (subject_of(oversize["session_id"]), json.dumps(oversize).encode(), "too_large",
         ["16384"]),
    ]  # fmt: skip
    assert len(bad[-1][1]) > 16_384
    async with isolated(js, "mixed") as names:
        # Published before the service starts: good and bad arrive in one fetch.
        sequences: dict[int, tuple[str, bytes, str, list[str]]] = {}
        for index, (subject, payload, reason, words) in enumerate(bad):
            sequences[await publish_raw(js, subject, payload)] = (subject, payload, reason, words)
            if index < len(good):
                await publish_event(js, good[index])
        published = len(bad) + len(good)

        async with running_service(tmp_path / "service.log", **names.env):
            await eventually(lambda: drained(js, names.durable), within=20, what="every settle")
            letters = await dead_letters(js, names.dlq_stream)
            info = await consumer(js, names.durable)

        assert len(letters) == len(bad)
        by_sequence = {int((m.headers or {})["Audit-Original-Sequence"]): m for m in letters}
        assert set(by_sequence) == set(sequences)
        for sequence, (subject, payload, reason, words) in sequences.items():
            letter = by_sequence[sequence]
            headers = letter.headers or {}
            assert letter.data == payload
            assert letter.subject == f"{DLQ_SUBJECT_PREFIX}.{subject.rsplit('.', 1)[-1]}"
            assert headers["Audit-Dlq-Reason"] == reason
            assert headers["Audit-Original-Subject"] == subject
            assert headers["Audit-Original-Stream"] == "DEVICE_EVENTS"
            assert headers["Audit-Deliveries"] == "1"
            for word in words:
                assert word in headers["Audit-Dlq-Detail"], (reason, headers["Audit-Dlq-Detail"])

        # Terminated messages never come back: each message was delivered exactly once.
        assert info.delivered is not None
        assert info.ack_floor is not None
        assert info.delivered.consumer_seq == published
        assert info.ack_floor.consumer_seq == published
        assert info.num_redelivered == 0
        assert len(await dead_letters(js, names.dlq_stream)) == len(bad)

    good_ids = [e["session_id"] for e in good]
    bad_ids = [bad_uuid["session_id"], no_offset["session_id"], mismatched["session_id"]]
    bad_ids += [elsewhere, oversize["session_id"]]
    assert await rows_per_session(db, good_ids + bad_ids) == dict.fromkeys(good_ids, 1)


async def test_poison_message_is_nakked_not_dropped_while_dead_letter_stream_is_gone(
    tmp_path: Path, js: JetStreamContext
) -> None:
    session_id = str(uuid.uuid4())
    async with (
        isolated(js, "nodlq") as names,
        running_service(tmp_path / "service.log", **names.env),
    ):
        await js.delete_stream(names.dlq_stream)
        sequence = await publish_raw(js, subject_of(session_id), b"{not json")

        async def redelivered() -> bool:
            info = await consumer(js, names.durable)
            return (info.num_redelivered or 0) >= 1

        await eventually(redelivered, within=20, what="the poison message to be redelivered")
        assert not await stream_exists(js, names.dlq_stream)
        info = await consumer(js, names.durable)
        assert info.num_ack_pending == 1  # held, not acked or terminated

        await js.add_stream(
            StreamConfig(name=names.dlq_stream, subjects=[f"{DLQ_SUBJECT_PREFIX}.>"])
        )

        async def dead_lettered() -> bool:
            stored = (await js.stream_info(names.dlq_stream)).state.messages
            return stored >= 1 and await drained(js, names.durable)

        await eventually(dead_lettered, within=45, what="the dead letter after the stream is back")
        letters = await dead_letters(js, names.dlq_stream)
        info = await consumer(js, names.durable)

    assert len(letters) == 1
    headers = letters[0].headers or {}
    assert letters[0].data == b"{not json"
    assert headers["Audit-Dlq-Reason"] == "invalid_json"
    assert headers["Audit-Original-Subject"] == subject_of(session_id)
    assert headers["Audit-Original-Sequence"] == str(sequence)
    assert int(headers["Audit-Deliveries"]) >= 2
    assert info.num_ack_pending == 0
