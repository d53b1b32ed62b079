"""The trail's bytes: docs/trail.md's test vectors, RFC 8785's examples, refusals, keys."""

import json
import re
import stat
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.trail import canonical, hashing
from service.trail.hashing import (
    ZERO_HASH,
    CanonicalError,
    RowImage,
    canonical_json,
    record_hash,
    row_array,
    row_hash,
    row_image_from_record,
    seal_array,
    seal_hash,
    time_text,
)
from service.trail.keys import (
    TrailKeyError,
    generate_key_file,
    load_signer,
    parse_public_key,
    signer_from_seed,
    trusted_keys,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "trail.md").read_text()


def vectors(kind: str) -> dict[str, str]:
    """Each '### <kind> vector NAME' section of docs/trail.md, by NAME."""
    sections = re.split(r"^### ", DOC, flags=re.M)
    return {
        section.split()[2].rstrip(":"): section
        for section in sections
        if section.startswith(f"{kind} vector ")
    }


def block(section: str, language: str) -> str:
    """The one fenced block of that language in a section."""
    (found,) = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    return str(found)


def value(section: str, label: str) -> str:
    """The `…` after 'label:' in a section."""
    return str(re.search(rf"^{label}: `([^`]+)`", section, re.M).group(1))  # type: ignore[union-attr]


def image_of(data: dict[str, Any]) -> RowImage:
    """A RowImage from a vector's JSON (UUIDs and times as text)."""

    def moment(text: str | None) -> datetime | None:
        return None if text is None else datetime.fromisoformat(text)

    def ident(text: str | None) -> uuid.UUID | None:
        return None if text is None else uuid.UUID(text)

    return RowImage(
        **{
            **data,
            **{k: ident(data[k]) for k in ("id", "tenant_id", "user_id", "device_id")},
            **{k: moment(data[k]) for k in ("created_at", "occurred_at", "ingested_at")},
        }
    )


def test_docs_hold_the_row_and_seal_vectors() -> None:
    assert set(vectors("Row")) == {"R1", "R2", "R3"}
    assert set(vectors("Seal")) == {"S1", "S2"}


@pytest.mark.parametrize("name", sorted(vectors("Row")))
def test_row_vector_in_the_docs_has_the_documented_bytes_and_hash(name: str) -> None:
    section = vectors("Row")[name]
    image = image_of(json.loads(block(section, "json")))

    assert canonical_json(row_array(image)).decode() == block(section, "text").strip()
    assert row_hash(image).hex() == value(section, "Row hash")


@pytest.mark.parametrize("name", sorted(vectors("Seal")))
def test_seal_vector_in_the_docs_has_the_documented_bytes_and_hash(name: str) -> None:
    section = vectors("Seal")[name]
    data = json.loads(block(section, "json"))
    fields = {
        "seq": data["seq"],
        "prev_hash": bytes.fromhex(data["prev_hash"]),
        "sealed_at": datetime.fromisoformat(data["sealed_at"]),
        "key_id": data["key_id"],
        "entries": [(uuid.UUID(r), uuid.UUID(s), bytes.fromhex(h)) for r, s, h in data["rows"]],
    }

    assert canonical_json(seal_array(**fields)).decode() == block(section, "text").strip()
    assert seal_hash(**fields).hex() == value(section, "Seal hash")


def test_seal_vectors_chain_and_their_row_hashes_are_the_row_vectors() -> None:
    rows, seals = vectors("Row"), vectors("Seal")
    first, second = (json.loads(block(seals[n], "json")) for n in ("S1", "S2"))
    row_hashes = {value(rows[n], "Row hash") for n in rows}

    assert first["prev_hash"] == ZERO_HASH.hex()
    assert second["prev_hash"] == value(seals["S1"], "Seal hash")
    assert {h for _, _, h in first["rows"] + second["rows"]} == row_hashes


def test_signed_seal_vector_has_the_documented_key_and_signature() -> None:
    section = vectors("Seal")["S2"]
    signer = signer_from_seed(value(section, "Signing seed"))
    digest = bytes.fromhex(value(section, "Seal hash"))
    signature = value(section, "Signature \\(Ed25519 over the 32 bytes of the seal hash, hex\\)")

    assert signer.key_id == json.loads(block(section, "json"))["key_id"]
    # Ed25519 is deterministic: the same key signs the same hash the same way.
    assert signer.sign(digest).hex() == signature
    assert (
        trusted_keys(signer.key_id).problem(signer.key_id, digest, bytes.fromhex(signature)) is None
    )


def test_keys_sort_by_utf16_code_units_as_in_rfc8785() -> None:
    # RFC 8785 §3.2.3, its example of property sorting.
    data = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }

    assert list(json.loads(canonical_json(data)).values()) == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]


def test_strings_escape_as_in_rfc8785() -> None:
    # RFC 8785 §3.2.2.2: only these escapes, lower-case hex, the rest as itself.
    text = "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/"

    assert canonical_json(text) == '"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'.encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-canonical.MAX_SAFE_INTEGER, canonical.MAX_SAFE_INTEGER)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=4), inner)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fast_encoding_writes_what_the_reference_jcs_writes(data: Any) -> None:
    assert canonical_json(data) == canonical.reference_jcs(data).encode()


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        ({"duration_seconds": 1.5}, "float"),
        ({"duration_seconds": 2.0}, "float"),
        ({"big": 2**53}, "beyond"),
        ({"small": -(2**53)}, "beyond"),
        ({"text": "\ud800"}, "surrogate"),
        ({"\udfff": "key"}, "surrogate"),
        ({1: "not a string key"}, "key"),
        ({"raw": b"bytes"}, "no JSON form"),
    ],
    ids=["float", "whole-float", "big-int", "small-int", "surrogate", "surrogate-key",
         "int-key", "bytes"],
)  # fmt: skip
def test_values_without_an_exact_canonical_form_are_refused(data: Any, refusal: str) -> None:
    with pytest.raises(CanonicalError, match=refusal):
        canonical_json(data)


def test_times_are_utc_with_six_fraction_digits_and_four_year_digits() -> None:
    east = timezone(timedelta(hours=5, minutes=30))

    assert time_text(datetime(2026, 3, 12, 21, 42, 55, tzinfo=UTC)) == "2026-03-12T21:42:55.000000Z"
    assert time_text(datetime(2026, 3, 13, 3, 12, 55, 7, tzinfo=east)) == (
        "2026-03-12T21:42:55.000007Z"
    )
    assert time_text(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00.000000Z"
    with pytest.raises(CanonicalError, match="no offset"):
        time_text(datetime(2026, 3, 12, 21, 42, 55))


def test_the_verifiers_record_hash_equals_the_row_hash_of_the_image() -> None:
    section = vectors("Row")["R3"]
    data = json.loads(block(section, "json"))
    image = image_of(data)
    columns = [getattr(image, name) for name in hashing.ROW_COLUMNS]
    as_text = [
        json.dumps(c) if n == "details" else c
        for n, c in zip(hashing.ROW_COLUMNS, columns, strict=True)
    ]

    assert record_hash(columns) == record_hash(as_text) == row_hash(image)
    assert row_image_from_record(dict(zip(hashing.ROW_COLUMNS, as_text, strict=True))) == image


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=6), json_values))
def test_details_read_as_text_hash_as_the_object_they_hold(details: dict[str, Any]) -> None:
    image = image_of(json.loads(block(vectors("Row")["R1"], "json")))
    columns = [getattr(image, name) for name in hashing.ROW_COLUMNS]
    at = hashing.ROW_COLUMNS.index("details")

    def with_details(value: Any) -> list[Any]:
        return [*columns[:at], value, *columns[at + 1 :]]

    # jsonb writes "key": value with spaces and non-ASCII as itself; others may escape it.
    texts = [json.dumps(details), json.dumps(details, ensure_ascii=False, separators=(", ", ": "))]
    assert {record_hash(with_details(text)) for text in texts} == {
        record_hash(with_details(details))
    }


def test_a_row_changed_to_hold_a_float_gets_a_hash_refused_not_a_match() -> None:
    image = image_of(json.loads(block(vectors("Row")["R1"], "json")))
    columns = [getattr(image, name) for name in hashing.ROW_COLUMNS]
    columns[hashing.ROW_COLUMNS.index("details")] = '{"duration_seconds": 2145.0}'

    with pytest.raises(CanonicalError, match="not an integer"):
        record_hash(columns)


def test_generated_key_file_is_a_private_server_seed_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "trail.seed"

    key_id = generate_key_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("SN")
    assert key_id.startswith("N")
    assert load_signer(path).key_id == key_id
    with pytest.raises(FileExistsError):
        generate_key_file(path)


def test_signature_verifies_only_under_its_own_trusted_key(tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate_key_file(tmp_path / name)
    signer, other = load_signer(tmp_path / "a"), load_signer(tmp_path / "b")
    digest = bytes(range(32))
    signature = signer.sign(digest)

    both = trusted_keys(f"{signer.key_id}, {other.key_id}")
    assert both.problem(signer.key_id, digest, signature) is None
    assert "does not verify" in str(both.problem(signer.key_id, bytes(32), signature))
    assert "does not verify" in str(both.problem(other.key_id, digest, signature))
    assert "not a trusted key" in str(
        trusted_keys(other.key_id).problem(signer.key_id, digest, signature)
    )


@pytest.mark.parametrize(
    "text",
    [
        "NAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RSWA",  # checksum off by one
        "SNAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H2D5U",  # a seed, not a key
        "not a key",
    ],
)
def test_public_keys_with_a_bad_checksum_or_kind_are_refused(text: str) -> None:
    with pytest.raises(TrailKeyError):
        parse_public_key(text)


def test_a_seed_with_a_bad_checksum_is_refused() -> None:
    seed = "SNAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H2D5U"

    with pytest.raises(TrailKeyError, match="checksum"):
        signer_from_seed(seed[:-1] + "A")
