"""Dead letters as text for a terminal: table rows, a summary, one dead letter in full.

Everything shown passes through `printable`: a dead letter holds whatever a publisher sent,
and an escape sequence printed raw could rewrite the operator's terminal.
"""

import json
import unicodedata
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from service.deadletters.letters import DELIVERIES, FAILED_AT, DeadLetter
from service.deadletters.replay import ReplayReport

# Past this, `show` stops the hex dump; `show --raw` writes every byte.
HEX_LIMIT = 4096
_COLUMNS = ("SEQ", "FAILED AT", "REASON", "ORIGINAL SUBJECT", "ORIGINAL", "DLV", "REPLAYED")


def printable(text: str) -> str:
    """text with every character a terminal would act on (controls, bidi marks) escaped."""
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode() for char in text
    )


def count(number: int, noun: str) -> str:
    """ "1 dead letter", "2 dead letters"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "no"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def table(letters: Sequence[DeadLetter], *, width: int) -> list[str]:
    """A header and one row per dead letter, the detail cut to fit width characters."""
    rows = [
        tuple(
            printable(cell)
            for cell in (
                str(letter.sequence),
                letter.headers.get(FAILED_AT, ""),
                letter.reason,
                letter.original_subject,
                letter.original_position,
                letter.headers.get(DELIVERIES, ""),
                _time(letter.replayed_at),
            )
        )
        for letter in letters
    ]
    widths = [max(len(cell) for cell in column) for column in zip(_COLUMNS, *rows, strict=True)]
    detail_cells = ["DETAIL", *(printable(letter.detail) for letter in letters)]
    lines = []
    for cells, detail in zip([_COLUMNS, *rows], detail_cells, strict=True):
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        room = max(40, width - len(line) - 2)
        cut = detail if len(detail) <= room else detail[: room - 1] + "…"
        lines.append(f"{line}  {cut}".rstrip())
    return lines


def summary(letters: Sequence[DeadLetter], *, total: int, shown: int, filtered: bool) -> str:
    """One line: how many dead letters (match), how many replayed, counts by reason."""
    if not letters:
        return (
            f"no dead letters match ({count(total, 'dead letter')} in all)"
            if filtered
            else "no dead letters"
        )
    if filtered:
        text = f"{len(letters)} of {count(total, 'dead letter')} match"
    else:
        text = count(len(letters), "dead letter")
    replayed = sum(letter.replayed_at is not None for letter in letters)
    counts = Counter(letter.reason or "?" for letter in letters)
    text += f", {replayed} replayed: " + ", ".join(
        f"{printable(reason)} {count}" for reason, count in sorted(counts.items())
    )
    if shown < len(letters):
        text += f" (first {shown} shown)"
    return text


def payload_lines(payload: bytes) -> tuple[str, list[str]]:
    """(what the payload is, its lines): indented JSON, escaped text, or a hex dump."""
    if not payload:
        return "empty", []
    try:
        decoded = json.loads(payload)
    except ValueError:
        pass
    else:
        # ensure_ascii=False keeps names readable; printable still escapes what is unsafe.
        text = json.dumps(decoded, indent=2, ensure_ascii=False)
        return "JSON", [printable(line) for line in text.splitlines()]
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return "binary", _hexdump(payload)
    controls = sum(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text)
    if controls > len(text) // 10:
        return "binary", _hexdump(payload)
    return "text", [printable(line.replace("\t", "    ")) for line in text.split("\n")]


def _hexdump(data: bytes) -> list[str]:
    lines = []
    for offset in range(0, min(len(data), HEX_LIMIT), 16):
        chunk = data[offset : offset + 16]
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  |{ascii_}|")
    if len(data) > HEX_LIMIT:
        lines.append(f"… {len(data) - HEX_LIMIT} more bytes (show --raw writes them all)")
    return lines


def details(letter: DeadLetter, *, stream: str) -> list[str]:
    """Everything about one dead letter: where it is, every header, the payload."""
    payload = letter.payload or b""
    kind, body = payload_lines(payload)
    return [
        f"dead letter {letter.sequence} in {stream}",
        f"  subject      {printable(letter.subject)}",
        f"  stored at    {_time(letter.stored_at)}",
        f"  replayed     {_time(letter.replayed_at)}",
        "headers:",
        *(f"  {printable(k)}: {printable(v)}" for k, v in sorted(letter.headers.items())),
        f"payload ({len(payload)} bytes, {kind}):",
        *body,
    ]


def replay_lines(report: ReplayReport, *, stream: str, dry_run: bool) -> list[str]:
    """One line per selected dead letter (replayed, skipped or failed), then the count."""
    verb = "would replay" if dry_run else "replayed"
    lines = []
    for item in report.replayed:
        letter = item.letter
        line = f"{verb} {letter.sequence} to {printable(letter.original_subject)}"
        if item.sequence is not None:
            line += f" ({stream}:{item.sequence})"
        if letter.replayed_at is not None:
            line += f", again: already replayed at {_time(letter.replayed_at)}"
        lines.append(line)
    for letter in report.skipped:
        when = _time(letter.replayed_at)
        lines.append(f"skipped {letter.sequence}: already replayed at {when} (--again to resend)")
    lines += [f"could not replay {letter.sequence}: {why}" for letter, why in report.failed]
    line = f"{verb} {len(report.replayed)} of {count(report.selected, 'dead letter')} to {stream}"
    if report.skipped:
        line += f"; {len(report.skipped)} already replayed, skipped"
    if report.failed:
        line += f"; {len(report.failed)} could not be replayed"
    return [*lines, line]
