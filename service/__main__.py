"""Command line of session-audit: `python -m service --help`."""

import argparse
import asyncio
import getpass
import os
import sys
import time

import nats
from faststream.nats.security import parse_security

from service.broker import nats_security
from service.config import Settings, get_settings, redact
from service.deadletters.cli import add_dlq_commands, run_dlq
from service.dev.publisher import ensure_publisher_stream, sample_messages
from service.repository import create_engine, ensure_login_role
from service.trail.cli import add_trail_commands, run_trail


async def publish_sample(
    settings: Settings, *, count: int, poison: bool, create_stream: str | None
) -> int:
    """Publish sample events with JetStream acks, showing progress; returns how many."""
    # The publisher's own account: authentication and TLS as the settings give them.
    options = parse_security(nats_security(settings))
    url = settings.nats_url
    if create_stream and await ensure_publisher_stream(url, create_stream, **options):
        print(f"created stream {create_stream} with the publisher's config", file=sys.stderr)
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False, **options)
    js = nc.jetstream()
    messages = list(sample_messages(count, seed=int(time.time()), poison=poison))
    step = max(1, len(messages) // 10)
    try:
        for done, (subject, payload) in enumerate(messages, start=1):
            await js.publish(subject, payload)
            if done % step == 0 or done == len(messages):
                print(f"published {done}/{len(messages)}", file=sys.stderr, flush=True)
    finally:
        await nc.close()
    return len(messages)


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("password for the new login: ")
    return sys.stdin.readline().rstrip("\n")


async def create_login(settings: Settings, name: str, password: str | None, group: str) -> bool:
    """Create the login role through DATABASE_URL; False if it already existed."""
    engine = create_engine(
        settings.database_url,
        sslmode=settings.database_sslmode,
        root_cert=settings.database_ssl_root_cert,
    )
    try:
        return await ensure_login_role(engine, name=name, password=password, group=group)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser(
        "publish-sample",
        help="publish realistic session-end events to NATS_URL",
        description=(
            "Publish COUNT sessions' end events as the SSH relay does; every tenth session "
            "ends by idle timeout and sends two events (one row is expected for it)."
        ),
    )
    sample.add_argument("--count", type=int, default=20, help="sessions to end (default 20)")
    sample.add_argument(
        "--poison", action="store_true", help="also publish 4 invalid messages (dead letters)"
    )
    sample.add_argument(
        "--create-stream",
        action="store_true",
        help="create STREAM with the publisher's config first if it is absent (dev only)",
    )
    login = commands.add_parser(
        "create-login",
        help="create a login role for the service (writer), a reader or a verifier, if absent",
        description=(
            "Create login role NAME in audit_writer (default), audit_reader or "
            "audit_verifier (the trail's verifier: reads every tenant), connecting "
            "as DATABASE_URL, which must be the schema's owner (or a role that may create "
            "roles). The password is asked for on a terminal, else read from standard "
            'input (`printf %s "$PW" | ...`), never from the command line.'
        ),
    )
    login.add_argument("name", help="the login role to create, e.g. session_audit")
    role = login.add_mutually_exclusive_group()
    role.add_argument(
        "--reader", action="store_true", help="a tenant-scoped reader instead of a writer"
    )
    role.add_argument(
        "--verifier",
        action="store_true",
        help="a login for `trail verify` (reads every tenant's rows and seals, writes nothing)",
    )
    login.add_argument(
        "--no-password", action="store_true", help="no password (trust or peer authentication)"
    )
    add_dlq_commands(commands)
    add_trail_commands(commands)
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command == "dlq":
        return run_dlq(args, settings)
    if args.command == "trail":
        return run_trail(args, settings)
    if args.command == "create-login":
        group = "reader" if args.reader else "verifier" if args.verifier else "writer"
        password = None if args.no_password else _read_password()
        created = asyncio.run(create_login(settings, args.name, password, group))
        print(
            f"{args.name}: {'created in' if created else 'already exists; not changed,'}"
            f" audit_{group}"
        )
        return 0
    if args.command == "publish-sample":
        sent = asyncio.run(
            publish_sample(
                settings,
                count=args.count,
                poison=args.poison,
                create_stream=settings.stream if args.create_stream else None,
            )
        )
        print(f"{sent} messages published to {redact(settings.nats_url)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader (head, less) went away early: not a failure worth a traceback, and
        # stdout must point somewhere harmless for the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
