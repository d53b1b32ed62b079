"""The `trail` commands of `python -m service`: verify the trail, make a key, anchor by hand.

Parsing and printing only: results on stdout, progress and errors on stderr. Exit status of
`verify`: 0 intact, 1 findings, 2 the verification could not run (the line on stderr says
why). An unreachable anchor is a 2, not a finding: it is no evidence of tampering, and a 0
without it would claim more than was checked; --no-anchor runs without it, and says so.
"""

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from nats.errors import Error as NatsError
from sqlalchemy.exc import DBAPIError

from service.config import Settings, redact
from service.repository import create_engine
from service.trail.anchor import anchor_pending, ensure_anchor_stream
from service.trail.connect import open_jetstream, verify_with_settings
from service.trail.keys import TrailKeyError, generate_key_file, trusted_keys
from service.trail.verify import CannotVerify, Report
from service.trail.view import as_json, finding_line, progress_line, summary_line


def _out(text: str) -> None:
    """A line of the result, on stdout."""
    sys.stdout.write(text + "\n")


def _err(text: object) -> None:
    """A line of progress or an error, on stderr, at once."""
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


# A progress line at most this often, and only once a run has gone on this long.
_PROGRESS_EVERY_S = 5.0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def add_trail_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `trail` and its verify, keygen and anchor commands to the command line."""
    trail = commands.add_parser(
        "trail",
        help="verify the tamper-evident trail of the audit rows; make its signing key",
        description=(
            "Every batch the service writes is sealed: a signed, hash-chained record of its "
            "rows in audit_seals, anchored to TRAIL_ANCHOR_STREAM (docs/trail.md)."
        ),
    )
    sub = trail.add_subparsers(dest="trail_command", required=True, metavar="COMMAND")
    verify = sub.add_parser(
        "verify",
        help="recompute every row and seal hash, link and signature; compare the anchor",
        description=(
            "Check every seal from the first (or SEQ) to the newest: each row it names exists "
            "and hashes as sealed, each seal links to the one before and is signed by a "
            "trusted key, no service row is unsealed, and the anchor agrees. Connects to "
            "DATABASE_URL, which must be a login in audit_verifier, and to NATS_URL. One line "
            "per finding, then a summary. Exit 0 intact, 1 findings, 2 could not run."
        ),
    )
    verify.add_argument(
        "--since", type=_positive, default=1, metavar="SEQ", help="start at seal SEQ (default 1)"
    )
    verify.add_argument("--json", action="store_true", help="one JSON document on stdout")
    verify.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUBKEY",
        help="a trusted public key (N…), besides TRAIL_TRUSTED_KEYS; repeat for several",
    )
    verify.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="unsigned seals are no finding (also TRAIL_ALLOW_UNSIGNED=true)",
    )
    verify.add_argument(
        "--no-anchor",
        action="store_true",
        help="do not read the anchor (NATS); a deleted tail of seals then goes unseen",
    )
    keygen = sub.add_parser(
        "keygen",
        help="write a new signing key (nkeys seed) to FILE; print its public key",
        description=(
            "Write a new Ed25519 nkeys server seed (SN…) to FILE with mode 0600; never over "
            "an existing file. Point TRAIL_SIGNING_KEY_FILE at it and add the public key it "
            "prints to TRAIL_TRUSTED_KEYS wherever the trail is verified."
        ),
    )
    keygen.add_argument("file", type=Path, metavar="FILE")
    sub.add_parser(
        "anchor",
        help="publish the seals not yet anchored (the service does this by itself)",
        description=(
            "Publish every seal newer than TRAIL_ANCHOR_STREAM's last message, in order, "
            "creating the stream if absent. Connects to DATABASE_URL and NATS_URL."
        ),
    )


class _Progress:
    """Progress lines on stderr for runs long enough to need them."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.said = self.started

    def __call__(self, report: Report) -> None:
        now = time.monotonic()
        if now - self.said >= _PROGRESS_EVERY_S:
            _err(progress_line(report, now - self.started))
            self.said = now


def trail_verify(args: argparse.Namespace, settings: Settings) -> int:
    """trail verify: the findings and a summary; exit 0 intact, 1 findings."""
    allow_unsigned = args.allow_unsigned or settings.trail_allow_unsigned
    try:
        trusted = trusted_keys(settings.trail_trusted_keys, args.key)
    except TrailKeyError as error:
        raise CannotVerify(f"TRAIL_TRUSTED_KEYS or --key: {error}") from None
    if not trusted and not allow_unsigned:
        msg = "no trusted key: set TRAIL_TRUSTED_KEYS or give --key PUBKEY (or --allow-unsigned)"
        raise CannotVerify(msg)
    report = asyncio.run(
        verify_with_settings(
            settings,
            trusted=trusted,
            allow_unsigned=allow_unsigned,
            since=args.since,
            use_anchor=not args.no_anchor,
            progress=_Progress(),
        )
    )
    if args.json:
        _out(json.dumps(as_json(report), indent=2))
    else:
        for finding in report.findings:
            _out(finding_line(finding))
        _out(summary_line(report))
    return 0 if report.intact else 1


def trail_keygen(args: argparse.Namespace, settings: Settings) -> int:
    """trail keygen: a new key file, and its public key on stdout."""
    try:
        key_id = generate_key_file(args.file)
    except FileExistsError:
        _err(f"{args.file} exists: a key is never overwritten")
        return 2
    except OSError as error:
        _err(f"cannot write {args.file}: {error.strerror}")
        return 2
    _err(f"wrote {args.file} (mode 0600); its public key, for TRAIL_TRUSTED_KEYS:")
    _out(key_id)
    return 0


async def _anchor(settings: Settings) -> tuple[int, int]:
    engine = create_engine(
        settings.database_url,
        sslmode=settings.database_sslmode,
        root_cert=settings.database_ssl_root_cert,
    )
    stream = settings.trail_anchor_stream
    try:
        async with open_jetstream(settings) as js:
            await ensure_anchor_stream(js, settings)
            published = await anchor_pending(js, engine, stream=stream)
            info = await js.stream_info(stream)
            return published, info.state.messages
    except (DBAPIError, OSError) as error:
        msg = f"cannot read the seals at DATABASE_URL={redact(settings.database_url)}: {error}"
        raise CannotVerify(redact(msg)) from None
    except (NatsError, TimeoutError) as error:
        raise CannotVerify(f"cannot anchor to {stream}: {error}") from None
    finally:
        await engine.dispose()


def trail_anchor(args: argparse.Namespace, settings: Settings) -> int:
    """trail anchor: publish what is not yet anchored; say how much."""
    published, held = asyncio.run(_anchor(settings))
    _out(f"anchored {published} seals to {settings.trail_anchor_stream} ({held} held there)")
    return 0


_COMMANDS = {"verify": trail_verify, "keygen": trail_keygen, "anchor": trail_anchor}


def run_trail(args: argparse.Namespace, settings: Settings) -> int:
    """Run one trail command; a CannotVerify becomes one line on stderr and exit status 2."""
    try:
        return _COMMANDS[args.trail_command](args, settings)
    except CannotVerify as error:
        _err(error)
        return 2
