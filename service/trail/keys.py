"""The trail's signing key (an nkeys seed in a file) and the public keys a verifier trusts.

Seals are Ed25519-signed over their 32-byte hash. The key is an nkeys seed, the format NATS
operators already handle; the public key (its key_id, stored in every seal) is the nkeys
public key. New keys are server keys (seed SN…, public key N…): a NATS server never accepts
a server key as a client's login, so the trail key can neither be mistaken for a NATS
credential nor used as one, and its public key reads differently from the U… users and
A… accounts of a NATS configuration. Seeds of the other kinds are accepted all the same.

A key found only in the database proves nothing (whoever can write a seal can write a key
beside it): the keys a verifier trusts always come from its settings or command line.
"""

import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from service.config import Settings

KEY_PREFIX = nkeys.PREFIX_BYTE_SERVER
_PUBLIC_PREFIXES = {
    nkeys.PREFIX_BYTE_SERVER: "server",
    nkeys.PREFIX_BYTE_ACCOUNT: "account",
    nkeys.PREFIX_BYTE_USER: "user",
    nkeys.PREFIX_BYTE_OPERATOR: "operator",
    nkeys.PREFIX_BYTE_CLUSTER: "cluster",
}


class TrailKeyError(ValueError):
    """A key that cannot be used: unreadable file, not a seed, not a public key."""


@dataclass(frozen=True)
class Signer:
    """Signs seal hashes with one Ed25519 key; key_id is its nkeys public key."""

    key_id: str
    _key: SigningKey

    def sign(self, digest: bytes) -> bytes:
        """The 64-byte Ed25519 signature of a 32-byte seal hash."""
        if len(digest) != 32:
            msg = f"a seal hash has 32 bytes, not {len(digest)}"
            raise ValueError(msg)
        return bytes(self._key.sign(digest).signature)


def signer_from_seed(seed: str) -> Signer:
    """A Signer for an nkeys seed (S…), its checksum checked."""
    cleaned = seed.strip()
    try:
        decoded = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except binascii.Error:
        decoded = b""
    # Two prefix bytes (S, then the key's kind in the next five bits), 32 bytes, a CRC-16.
    prefix = (decoded[0] & 0x07) << 5 | (decoded[1] & 0xF8) >> 3 if len(decoded) == 36 else -1
    if (
        prefix not in _PUBLIC_PREFIXES
        or decoded[0] & 0xF8 != nkeys.PREFIX_BYTE_SEED
        or _crc(decoded[:34]) != decoded[34:]
    ):
        msg = "not an nkeys seed (S… in base32, 58 characters, with a valid checksum)"
        raise TrailKeyError(msg)
    key = SigningKey(decoded[2:34])
    return Signer(public_key_text(prefix, bytes(key.verify_key)), key)


def _crc(data: bytes) -> bytes:
    return int(nkeys.crc16(bytearray(data))).to_bytes(2, "little")


def load_signer(path: Path) -> Signer:
    """The Signer for the seed in a file (TRAIL_SIGNING_KEY_FILE)."""
    try:
        text = path.read_text()
    except OSError as error:
        msg = f"cannot read the signing key {path}: {error.strerror}"
        raise TrailKeyError(msg) from None
    try:
        return signer_from_seed(text)
    except TrailKeyError as error:
        msg = f"{path}: {error}"
        raise TrailKeyError(msg) from None


def generate_key_file(path: Path) -> str:
    """Write a new server seed to path (mode 0600, never over an existing file); its key id."""
    seed = bytes(nkeys.encode_seed(os.urandom(32), KEY_PREFIX))
    # O_EXCL: an existing key is someone's trail; overwriting it would orphan its seals.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(seed + b"\n")
    return signer_from_seed(seed.decode()).key_id


def public_key_text(prefix: int, raw: bytes) -> str:
    """The nkeys public key (N…, A…, U…, …) of a raw 32-byte Ed25519 key."""
    body = bytes([prefix]) + raw
    return base64.b32encode(body + _crc(body)).decode().rstrip("=")


def parse_public_key(text: str) -> bytes:
    """The raw Ed25519 key of an nkeys public key, its prefix and checksum checked."""
    cleaned = text.strip()
    try:
        decoded = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except binascii.Error:
        decoded = b""
    if len(decoded) != 35 or decoded[0] not in _PUBLIC_PREFIXES:
        msg = f"{cleaned!r} is not an nkeys public key (N…, A…, U…, O… or C…, 56 characters)"
        raise TrailKeyError(msg)
    body, checksum = decoded[:33], decoded[33:]
    if _crc(body) != checksum:
        msg = f"{cleaned!r} is not an nkeys public key: its checksum does not match"
        raise TrailKeyError(msg)
    return body[1:]


class TrustedKeys:
    """The public keys whose signatures a verifier accepts (several: keys are rotated)."""

    def __init__(self, key_ids: Iterable[str]) -> None:
        self._keys = {key.strip(): VerifyKey(parse_public_key(key)) for key in key_ids}

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def problem(self, key_id: str, digest: bytes, signature: bytes) -> str | None:
        """Why the signature does not prove digest under a trusted key, or None if it does."""
        key = self._keys.get(key_id)
        if key is None:
            return f"signed by {key_id or '(no key)'}, which is not a trusted key"
        try:
            key.verify(digest, signature)
        except (BadSignatureError, ValueError):
            return f"the signature does not verify under {key_id}"
        return None


def trusted_keys(*sources: str | Iterable[str]) -> TrustedKeys:
    """TrustedKeys from comma-separated text (TRAIL_TRUSTED_KEYS) and lists (--key)."""
    found: list[str] = []
    for source in sources:
        items = source.split(",") if isinstance(source, str) else source
        found += [item.strip() for item in items if item.strip()]
    return TrustedKeys(found)


def configured_signer(settings: Settings) -> Signer | None:
    """The writer's Signer; None only when TRAIL_ALLOW_UNSIGNED says seals may go unsigned."""
    if settings.trail_signing_key_file is not None:
        return load_signer(settings.trail_signing_key_file)
    if settings.trail_allow_unsigned:
        return None
    msg = (
        "TRAIL_SIGNING_KEY_FILE is not set: seals must be signed (`python -m service trail "
        "keygen FILE` makes a key), or set TRAIL_ALLOW_UNSIGNED=true to write unsigned seals"
    )
    raise TrailKeyError(msg)
