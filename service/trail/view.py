"""A verification as text (one line per finding, a summary line) or as one JSON document."""

from typing import Any

from service.trail.report import Finding, Report, count_by_kind


def _n(number: int) -> str:
    return f"{number:,}"


def finding_line(finding: Finding) -> str:
    """kind, seal, row, session and why, in columns that grep and cut can take apart."""
    seal = "no seal" if finding.seq is None else f"seal {finding.seq}"
    row = f"row {finding.row_id or '?'}"
    session = f"session {finding.session_id or '?'}"
    return f"{finding.kind:<22}  {seal:<12}  {row:<40}  {session:<44}  {finding.detail}"


def _scope(report: Report) -> str:
    if not report.seals:
        what = "no seals" if report.since == 1 else f"no seals from {report.since} on"
    else:
        what = f"seals {report.first_seq}..{report.last_seq} ({_n(report.seals)} seals"
        what += f", {_n(report.rows)} rows)"
    return what


def _anchor(report: Report) -> str:
    if not report.anchor_checked:
        return "anchor not checked (--no-anchor): a deleted tail of seals would go unseen"
    if not report.anchored:
        return "nothing anchored yet"
    text = f"anchor read through seal {report.anchored_through}"
    if report.last_seq is not None and report.last_seq > report.anchored_through:
        text += f" ({_n(report.last_seq - report.anchored_through)} newer seals not yet anchored)"
    if report.unreadable_anchors:
        text += f", {_n(report.unreadable_anchors)} anchor messages unreadable"
    return text


def summary_line(report: Report) -> str:
    """One line: intact or not, what was covered, the anchor, and the speed."""
    rate = f"{report.seconds:.1f} s, {_n(round(report.rows_per_second))} rows/s"
    unsealed = sum(finding.kind == "unsealed" for finding in report.findings)
    rows = (
        f"{_n(report.service_rows)} service rows, {_n(unsealed) if unsealed else 'none'} unsealed"
    )
    body = f"{_scope(report)}; {rows}; {_anchor(report)}; {rate}"
    if report.intact:
        return f"intact: {body}"
    counts = ", ".join(f"{kind} {_n(n)}" for kind, n in count_by_kind(report.findings).items())
    found = len(report.findings)
    noun = "finding" if found == 1 else "findings"
    return f"NOT INTACT: {_n(found)} {noun} ({counts}); {body}"


def progress_line(report: Report, elapsed: float) -> str:
    """How far a long verification has come."""
    rate = report.rows / elapsed if elapsed else 0.0
    return (
        f"verified through seal {report.last_seq}: {_n(report.seals)} seals, "
        f"{_n(report.rows)} rows ({_n(round(rate))} rows/s), {_n(len(report.findings))} findings"
    )


def as_json(report: Report) -> dict[str, Any]:
    """The verification as one JSON document."""
    return {
        "intact": report.intact,
        "summary": {
            "since": report.since,
            "seals": report.seals,
            "first_seq": report.first_seq,
            "last_seq": report.last_seq,
            "rows": report.rows,
            "service_rows": report.service_rows,
            "pre_trail_rows": report.pre_trail_rows,
            "unsigned_allowed": report.unsigned_allowed,
            "anchor": {
                "checked": report.anchor_checked,
                "anchored": report.anchored,
                "through": report.anchored_through,
                "unreadable": report.unreadable_anchors,
            },
            "keys": dict(report.keys),
            "counts": count_by_kind(report.findings),
            "seconds": round(report.seconds, 3),
            "rows_per_second": round(report.rows_per_second),
        },
        "findings": [finding.as_json() for finding in report.findings],
    }
