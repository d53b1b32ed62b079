"""`make docs`: write the AsyncAPI document exactly as the running service serves it.

Run it with the canonical environment of `make docs` (compose's servers and names), so
the committed document does not depend on whoever generated it.
"""

import sys
from pathlib import Path

CANONICAL_ENV = {
    "NATS_URL": "nats://nats:4222",
    "STREAM": "DEVICE_EVENTS",
    "DLQ_STREAM": "AUDIT_DLQ",
    "DURABLE": "session-audit-writer",
}


def render() -> str:
    """The AsyncAPI document as YAML."""
    from service.main import specification  # reads the settings: import only when asked

    return specification.to_specification().to_yaml()


def main(argv: list[str]) -> int:
    """Write the document to the path given, or print it."""
    document = render()
    if argv:
        Path(argv[0]).write_text(document)
    else:
        sys.stdout.write(document)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
