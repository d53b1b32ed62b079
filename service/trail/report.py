"""What a verification found: findings by kind, seal, row and session, and a report of the run."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

# Finding kinds.
CHANGED = "changed"
DELETED = "deleted"
UNSEALED = "unsealed"
BROKEN_LINK = "broken_link"
BAD_SIGNATURE = "bad_signature"
UNSIGNED = "unsigned"
ANCHOR_MISMATCH = "anchor_mismatch"
MISSING = "missing_against_anchor"


class CannotVerify(Exception):
    """The verification could not run; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the trail does not prove: its kind, the seal, the row and its session."""

    kind: str
    seq: int | None
    row_id: UUID | None
    session_id: UUID | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        """The finding as a JSON object."""
        return {
            "kind": self.kind,
            "seq": self.seq,
            "row_id": None if self.row_id is None else str(self.row_id),
            "session_id": None if self.session_id is None else str(self.session_id),
            "detail": self.detail,
        }


@dataclass
class Report:
    """What a verification looked at, and what it found."""

    since: int
    findings: list[Finding] = field(default_factory=list)
    seals: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    rows: int = 0
    service_rows: int = 0
    pre_trail_rows: int = 0
    unsigned_allowed: bool = False
    anchor_checked: bool = False
    anchored: int = 0
    anchored_through: int = 0
    unreadable_anchors: int = 0
    keys: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def intact(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    @property
    def rows_per_second(self) -> float:
        """Sealed rows verified per second of the whole run."""
        return self.rows / self.seconds if self.seconds else 0.0


def count_by_kind(findings: Sequence[Finding]) -> dict[str, int]:
    """How many findings of each kind, in a stable order."""
    return dict(sorted(Counter(finding.kind for finding in findings).items()))
