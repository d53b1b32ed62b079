"""Hostile messages through the real parse-and-write path: each ends as one row or one letter."""

import json
import uuid
from typing import Any

import asyncpg
from faststream.nats import NatsBroker
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.security.in_memory import settle
from tests.session_events import session_end, subject_of

# --- property: anything at all, and the contract's event with values gone wrong ----------

TIMES = ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2026-02-30T10:00:00Z",
         "2026-03-12T25:00:00Z", "2026-03-12T16:07:10+24:00", "2026-03-12T16:07:10",
         "2026-03-12T16:07:10.1234567891Z", "2099-12-31T23:59:59-23:59", "1999-12-31T23:59:59Z",
         "2026-03-12T16:07:10-05:00"]  # fmt: skip
control_text = st.text(st.characters(max_codepoint=0x1F) | st.characters(min_codepoint=0x7F))
repeated = st.builds(
    lambda char, count: char * count,
    st.sampled_from(["a", " ", "é", "😀", "\x00", "\\", '"']),
    st.integers(0, 17_000),  # around MAX_PAYLOAD_BYTES
)
nested = st.builds(
    lambda depth, leaf: {"$raw": "[" * depth + leaf + "]" * depth},  # spliced in as it is
    st.integers(1, 400),  # both sides of the parser's depth limit
    st.sampled_from(["", "1", '"x"', "{}"]),
)
uuids = st.one_of(
    st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.uuids().map(lambda u: u.hex)
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
hostile_values = st.one_of(
    json_values,
    st.integers(min_value=-(2**70), max_value=2**70),
    control_text,
    repeated,
    uuids,
    st.sampled_from(TIMES),
    nested,
)
times = st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
# Values the contract lets through, at their edges: these must become rows.
accepted = {
    "user_id": st.none() | st.just("") | uuids,
    "source_ip": st.one_of(
        st.text(max_size=60),
        control_text,
        st.ip_addresses().map(str),
        st.none(),
        st.builds("[{}]:{}".format, st.ip_addresses(v=6), st.integers(-1, 99_999)),
        st.builds("{}%{}".format, st.ip_addresses(v=6), st.text(max_size=10)),
    ),
    "reason": st.none() | st.just("") | st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    "unexpected": hostile_values,
    "start_time": times,
    "end_time": times,
}


def _encode(event: dict[str, Any], ascii_only: bool) -> bytes:
    raw = {k: v for k, v in event.items() if isinstance(v, dict) and "$raw" in v}
    placeheld = {k: (f"@@{k}@@" if k in raw else v) for k, v in event.items()}
    text = json.dumps(placeheld, ensure_ascii=ascii_only)
    for key, value in raw.items():
        text = text.replace(f'"@@{key}@@"', value["$raw"])
    return text.encode("utf-8", "surrogatepass")


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[bytes, str]:
    """The contract's event, some values replaced, keys dropped, bytes broken, subject off."""
    # A fresh session each time, so that no example is a duplicate of an earlier one.
    event: dict[str, Any] = session_end()
    subject = subject_of(event)
    fields = draw(st.lists(st.sampled_from([*event, "unexpected"]), max_size=3, unique=True))
    for name in fields:
        choice = draw(st.integers(0, 9))
        if choice == 0:
            event.pop(name, None)
        elif choice <= 5 and name in accepted:
            event[name] = draw(accepted[name])
        else:
            event[name] = draw(hostile_values)
    body = _encode(event, draw(st.booleans()))
    if draw(st.integers(0, 19)) == 0:  # invalid UTF-8 somewhere
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    if draw(st.integers(0, 19)) == 0:
        subject = f"audit.session.end.{draw(st.sampled_from([str(uuid.uuid4()), 'x', '*']))}"
    return body, subject


PROPERTY = settings(
    max_examples=300,
    deadline=None,  # the per-message timeout in settle() bounds each example instead
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@PROPERTY
@given(body=st.binary(max_size=4096) | json_values.map(lambda v: json.dumps(v).encode()))
async def test_arbitrary_bytes_end_as_exactly_one_row_or_dead_letter(
    br: NatsBroker, db: asyncpg.Connection, body: bytes
) -> None:
    _, letters = await settle(br, db, body, f"audit.session.end.{uuid.uuid4()}")
    event(f"dead letter: {letters[0].reason}" if letters else "row")


@PROPERTY
@given(message=near_valid())
async def test_near_valid_events_end_as_exactly_one_row_or_dead_letter(
    br: NatsBroker, db: asyncpg.Connection, message: tuple[bytes, str]
) -> None:
    _, letters = await settle(br, db, *message)
    event(f"dead letter: {letters[0].reason}" if letters else "row")
