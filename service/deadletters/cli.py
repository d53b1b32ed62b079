"""The `dlq` commands of `python -m service`: the operator's view of the dead letters.

Parsing and printing only: results on stdout, progress and errors on stderr. The work is
done by store.py and replay.py beside it, the text by view.py.
"""

import argparse
import asyncio
import shutil
import sys

from service.config import Settings
from service.deadletters.replay import Progress, delete_dead_letters, purge_dead_letters, replay
from service.deadletters.store import DlqToolError, get_dead_letter, list_dead_letters
from service.deadletters.view import count, details, replay_lines, summary, table
from service.events import Refusal

# Below this many, a replay or purge is over before a progress line would help.
_PROGRESS_FROM = 10


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def add_dlq_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `dlq` and its list, show, replay and purge commands to the command line."""
    dlq = commands.add_parser(
        "dlq",
        help="list, show, replay and purge dead letters",
        description=(
            "Read the dead letters in DLQ_STREAM, replay them to STREAM once their cause is "
            "fixed, and purge the replayed ones. Uses NATS_URL, DLQ_STREAM and STREAM."
        ),
    )
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    reasons = [reason.value for reason in Refusal]
    listing = sub.add_parser(
        "list",
        help="one line per dead letter, and counts by reason",
        description=(
            "List the dead letters, oldest first: sequence, when and why each failed, where it "
            "came from, how often it was delivered, whether it was replayed. A last line counts "
            "them by reason."
        ),
    )
    listing.add_argument("--reason", choices=reasons, help="only dead letters with this reason")
    listing.add_argument(
        "--subject", metavar="TEXT", help="only those whose original subject contains TEXT"
    )
    listing.add_argument(
        "--limit", type=_positive, metavar="N", help="show the first N (the summary counts all)"
    )
    show = sub.add_parser(
        "show",
        help="everything about one dead letter",
        description=(
            "Print one dead letter's headers and payload: indented JSON, else text with control "
            "characters escaped, else a hex dump."
        ),
    )
    show.add_argument("sequence", type=_positive, metavar="SEQ", help="its sequence in DLQ_STREAM")
    show.add_argument("--raw", action="store_true", help="write only the payload's exact bytes")
    replaying = sub.add_parser(
        "replay",
        help="republish dead letters to their original subject",
        description=(
            "Publish each selected dead letter's original bytes to its original subject in "
            "STREAM, where the service consumes it again, and record it as replayed. One "
            "replayed before is skipped unless --again; the service keeps one row per session."
        ),
    )
    replaying.add_argument(
        "sequences", nargs="*", type=_positive, metavar="SEQ", help="dead letters"
    )
    replaying.add_argument("--reason", choices=reasons, help="every dead letter with this reason")
    replaying.add_argument("--all", action="store_true", help="every dead letter")
    replaying.add_argument("--again", action="store_true", help="also those replayed before")
    replaying.add_argument("--dry-run", action="store_true", help="say what it would replay, only")
    purge = sub.add_parser(
        "purge",
        help="delete replayed dead letters",
        description=(
            "Delete from DLQ_STREAM the dead letters that were replayed (with --all: every one). "
            "Shows them and asks first when stdin is a terminal; otherwise --yes is required."
        ),
    )
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--replayed", action="store_true", help="those that were replayed")
    which.add_argument("--all", action="store_true", help="every dead letter, replayed or not")
    purge.add_argument("--yes", action="store_true", help="delete without asking")


def _width() -> int:
    # Off a terminal (a pipe, a file) nothing is there to fit; a wide line keeps the detail.
    return shutil.get_terminal_size((200, 24)).columns


def _progress(verb: str) -> Progress:
    def report(done: int, total: int) -> None:
        if total >= _PROGRESS_FROM and (done % max(1, total // 10) == 0 or done == total):
            print(f"{verb} {done}/{total}", file=sys.stderr, flush=True)

    return report


def dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    """dlq list: a table of the matching dead letters and a summary line."""
    found = asyncio.run(list_dead_letters(settings, reason=args.reason, subject=args.subject))
    shown = found.letters[: args.limit] if args.limit else found.letters
    if shown:
        print("\n".join(table(shown, width=_width())))
    filtered = bool(args.reason or args.subject)
    print(summary(found.letters, total=found.total, shown=len(shown), filtered=filtered))
    return 0


def dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    """dlq show: one dead letter in full, or its exact bytes with --raw."""
    letter = asyncio.run(get_dead_letter(settings, args.sequence))
    if args.raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(letter.payload or b"")
        sys.stdout.buffer.flush()
    else:
        print("\n".join(details(letter, stream=settings.dlq_stream)))
    return 0


def dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    """dlq replay: republish the selected dead letters, one line each, then a count."""
    if bool(args.sequences) + (args.reason is not None) + args.all != 1:
        raise DlqToolError("dlq replay: give SEQ ..., --reason R or --all (exactly one)")
    report = asyncio.run(
        replay(
            settings,
            sequences=args.sequences,
            reason=args.reason,
            again=args.again,
            dry_run=args.dry_run,
            progress=None if args.dry_run else _progress("replayed"),
        )
    )
    if not report.selected:
        which = f"with reason {args.reason} " if args.reason else ""
        print(
            f"no dead letters {which}in {settings.dlq_stream}: nothing to replay", file=sys.stderr
        )
        return 1
    print("\n".join(replay_lines(report, stream=settings.stream, dry_run=args.dry_run)))
    return 1 if report.failed else 0


def _confirmed(question: str) -> bool:
    if not sys.stdin.isatty():
        raise DlqToolError("refusing to delete without --yes: stdin is not a terminal to ask on")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in {"y", "yes"}


def dlq_purge(args: argparse.Namespace, settings: Settings) -> int:
    """dlq purge: delete the replayed (or all) dead letters, after showing them."""
    stream = settings.dlq_stream
    found = asyncio.run(list_dead_letters(settings))
    letters = found.letters if args.all else [x for x in found.letters if x.replayed_at]
    what = "dead letter" if args.all else "replayed dead letter"
    if not letters:
        print(f"no {what}s in {stream}: nothing to purge")
        return 0
    if not args.yes:
        if args.all:
            print(summary(letters, total=found.total, shown=len(letters), filtered=False))
        else:
            print("\n".join(table(letters, width=_width())))
        print(f"{count(len(letters), what)} would be deleted from {stream}")
        if not _confirmed(f"delete {'it' if len(letters) == 1 else 'them'}?"):
            print("nothing deleted", file=sys.stderr)
            return 1
    if args.all:
        deleted = asyncio.run(purge_dead_letters(settings, up_to=letters[-1].sequence))
    else:
        sequences = [letter.sequence for letter in letters]
        deleted = asyncio.run(
            delete_dead_letters(settings, sequences, progress=_progress("deleted"))
        )
    print(f"deleted {count(deleted, what)} from {stream}")
    return 0


_COMMANDS = {"list": dlq_list, "show": dlq_show, "replay": dlq_replay, "purge": dlq_purge}


def run_dlq(args: argparse.Namespace, settings: Settings) -> int:
    """Run one dlq command; a DlqToolError becomes one line on stderr and its exit status."""
    try:
        return _COMMANDS[args.dlq_command](args, settings)
    except DlqToolError as error:
        print(error, file=sys.stderr)
        return error.exit_code
