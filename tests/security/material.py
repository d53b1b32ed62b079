"""Secrets the security tests make for themselves: X.509 certificates, NKeys, NATS JWTs."""

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# --- X.509 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its private key on disk."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A certificate authority that signs the test's server and client certificates."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: Path

    @classmethod
    def create(cls, directory: Path, name: str = "test-ca") -> "Authority":
        """A new self-signed CA, its certificate written to directory/<name>.pem."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            _builder(subject, subject, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        pem = directory / f"{name}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(name, cert, key, pem)

    def issue(self, directory: Path, name: str, *, server: bool) -> KeyPair:
        """A certificate for 127.0.0.1/localhost (server) or a client, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            _builder(subject, self.cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
            )
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        return pair


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- NKeys and NATS JWTs (decentralised auth, as nsc would make them) --------------------


@dataclass(frozen=True)
class NKey:
    """An NKey pair: the seed (secret) and the public key the server knows."""

    seed: str
    public: str

    @classmethod
    def create(cls, prefix: int) -> "NKey":
        """A new key of a kind: nkeys.PREFIX_BYTE_OPERATOR, _ACCOUNT or _USER."""
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed.decode(), nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        """An ed25519 signature of data by this key."""
        signature: bytes = nkeys.from_seed(bytearray(self.seed.encode())).sign(data)
        return signature


def _compact(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def nats_jwt(issuer: NKey, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (nats-io/jwt v2 claims) for subject, signed by issuer."""
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": claims | {"version": 2},
    }
    # jti: the base32 SHA-512/256 of the claims without it, as the Go library computes it.
    digest = hashlib.new("sha512_256", _compact(body)).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(_compact({"typ": "JWT", "alg": "ed25519-nkey"}))
    payload = _b64(_compact(body))
    signature = issuer.sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{_b64(signature)}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
              "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


@dataclass(frozen=True)
class Operator:
    """An operator with a system account and one JetStream-enabled account, trusted by config."""

    key: NKey
    system: NKey
    account: NKey

    @classmethod
    def create(cls) -> "Operator":
        """New operator, system account and application account keys."""
        return cls(
            NKey.create(nkeys.PREFIX_BYTE_OPERATOR),
            NKey.create(nkeys.PREFIX_BYTE_ACCOUNT),
            NKey.create(nkeys.PREFIX_BYTE_ACCOUNT),
        )

    def server_config(self, directory: Path) -> str:
        """nats-server config: operator mode, accounts preloaded into a memory resolver."""
        operator_jwt = directory / "operator.jwt"
        claims = {"type": "operator", "system_account": self.system.public}
        operator_jwt.write_text(nats_jwt(self.key, self.key.public, "test-operator", claims))
        system = nats_jwt(self.key, self.system.public, "SYS", _account(jetstream=False))
        account = nats_jwt(self.key, self.account.public, "AUDIT", _account(jetstream=True))
        return (
            f'operator: "{operator_jwt}"\n'
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {self.system.public}: "{system}"\n'
            f'  {self.account.public}: "{account}"\n'
            "}\n"
        )


def _account(*, jetstream: bool) -> dict[str, Any]:
    return {"type": "account", "limits": _UNLIMITED | (_JETSTREAM if jetstream else {})}


def user_creds(path: Path, account: NKey, name: str = "session-audit") -> Path:
    """A .creds file (user JWT issued by account, and the user's seed), as nsc writes it."""
    user = NKey.create(nkeys.PREFIX_BYTE_USER)
    claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    token = nats_jwt(account, user.public, name, claims)
    path.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{token}\n"
        "------END NATS USER JWT------\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed}\n"
        "------END USER NKEY SEED------\n"
    )
    path.chmod(0o600)
    return path
