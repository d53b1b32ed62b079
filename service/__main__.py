"""Command line of session-audit: `python -m service --help`."""

import argparse
import asyncio
import os
import sys
import time

import nats
from faststream.nats.security import parse_security

from service.broker import nats_security
from service.config import Settings, get_settings, redact
from service.dev.publisher import ensure_publisher_stream, sample_messages
from service.dlq_cli import add_dlq_commands, run_dlq


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
    add_dlq_commands(commands)
    args = parser.parse_args(argv)

    settings = get_settings()
    if args.command == "dlq":
        return run_dlq(args, settings)
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
