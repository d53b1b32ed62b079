"""The operator's dead-letter tool, changing side: replay dead letters, purge them.

A replay publishes a dead letter's original bytes to its original subject with a JetStream
publish (awaiting the PubAck) in STREAM, then marks it replayed (see service/deadletters/store.py).
A dead letter that was replayed before is skipped unless asked again: replaying a whole
reason twice after a partial fix would otherwise republish everything that already worked.
Republishing is safe either way, since the service keeps one row per session. The mark is
written after the PubAck, so a replay cut short between the two is replayed again next time.
"""

from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.errors import Error as NatsError
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from service.config import Settings
from service.deadletters.letters import DeadLetter
from service.deadletters.store import DeadLetterStream, DlqToolError, matching, open_dlq

Progress = Callable[[int, int], None]
# Header on a replayed event: which dead letter it came from, for whoever traces it later.
REPLAY_OF = "Audit-Replay-Of"


@dataclass(frozen=True)
class Replayed:
    """A dead letter as it was before this replay, and its new sequence in STREAM."""

    letter: DeadLetter
    sequence: int | None  # None on a dry run


@dataclass
class ReplayReport:
    """What a replay did with each selected dead letter."""

    selected: int = 0
    replayed: list[Replayed] = field(default_factory=list)
    skipped: list[DeadLetter] = field(default_factory=list)  # replayed before, not again
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)  # and why


async def replay(
    settings: Settings,
    *,
    sequences: Sequence[int] = (),
    reason: str | None = None,
    again: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> ReplayReport:
    """Republish these dead letters (by sequence, else by reason, else all) to STREAM."""
    async with open_dlq(settings) as dlq:
        if sequences:  # every sequence is checked before anything is published
            letters = [await dlq.letter(sequence) for sequence in dict.fromkeys(sequences)]
        else:
            letters = matching(await dlq.letters(), reason=reason)
        report = ReplayReport(selected=len(letters))
        todo = []
        for letter in letters:
            if not letter.original_subject:
                report.failed.append((letter, "it has no Audit-Original-Subject"))
            elif letter.replayed_at is not None and not again:
                report.skipped.append(letter)
            else:
                todo.append(letter)
        if todo and not dry_run:
            # A bucket we may not create must stop the replay before its first publish.
            await dlq.open_marks()
        for done, letter in enumerate(todo, start=1):
            if dry_run:
                report.replayed.append(Replayed(letter, None))
            elif (new_sequence := await _republish(dlq, letter, done - 1, len(todo))) is None:
                report.failed.append((letter, "it expired or was deleted since it was listed"))
            else:
                report.replayed.append(Replayed(letter, new_sequence))
            if progress is not None:
                progress(done, len(todo))
        return report


async def _republish(dlq: DeadLetterStream, letter: DeadLetter, done: int, of: int) -> int | None:
    if letter.payload is None:  # listed headers-only: fetch the bytes now, one at a time
        try:
            letter = await dlq.letter(letter.sequence)
        except DlqToolError:
            return None
    subject = letter.original_subject
    try:
        # stream= makes JetStream refuse a subject that is not in STREAM rather than
        # storing the event where the service never looks.
        ack = await dlq.js.publish(
            subject,
            letter.payload or b"",
            stream=dlq.settings.stream,
            headers={REPLAY_OF: f"{dlq.name}:{letter.sequence}"},
        )
    except (NatsError, TimeoutError) as error:
        msg = (
            f"could not replay dead letter {letter.sequence} to {subject} in "
            f"{dlq.settings.stream}: {error}; {done} of {of} replayed before it"
        )
        raise DlqToolError(msg) from None
    await dlq.mark_replayed(letter.sequence, datetime.now(UTC))
    return int(ack.seq)


async def delete_dead_letters(
    settings: Settings, sequences: Sequence[int], *, progress: Progress | None = None
) -> int:
    """Delete these dead letters and their replay marks; returns how many were still there."""
    deleted = 0
    async with open_dlq(settings) as dlq:
        marks: KeyValue | None = None
        with suppress(BucketNotFoundError):
            marks = await dlq.js.key_value(dlq.bucket)
        for done, sequence in enumerate(sequences, start=1):
            # Gone already (expired, or purged by someone else) is what was asked for.
            with suppress(NotFoundError, BadRequestError):
                deleted += bool(await dlq.js.delete_msg(dlq.name, sequence))
            if marks is not None:
                await marks.delete(str(sequence))
            if progress is not None:
                progress(done, len(sequences))
    return deleted


async def purge_dead_letters(settings: Settings, *, up_to: int) -> int:
    """Delete every dead letter up to sequence up_to and all replay marks; returns how many."""
    async with open_dlq(settings) as dlq:
        before = dlq.info.state.messages
        # seq= purges below it only: a dead letter stored after the operator confirmed stays.
        await dlq.js.purge_stream(dlq.name, seq=up_to + 1)
        with suppress(NotFoundError):
            await dlq.js.delete_key_value(dlq.bucket)
        after = (await dlq.js.stream_info(dlq.name)).state.messages
        return before - after
