"""The invariants of the design (README, "When things break"), checked against the database and, given a
way to look at stored objects, S3: by tests, the demo and chaos runs.

Each check returns human-readable violations; an empty list means the invariant holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from ai_pipeline.db.lifecycle import OPEN_STATUSES, TERMINAL_STATUSES, RequestStatus, sql_in

_SCOPE = "(CAST(:batch AS text) IS NULL OR r.batch_id = :batch)"
_TERMINAL = tuple(sorted(TERMINAL_STATUSES))
_ENDED_WITH_A_REASON = (RequestStatus.FAILED, RequestStatus.REJECTED, RequestStatus.CANCELED)
# Whether the object at an s3:// URI exists with this SHA-256 (`storage.uploads.object_check`).
ObjectCheck = Callable[[str, str], bool]


@dataclass
class InvariantReport:
    """Violations per invariant; `ok` when there are none."""

    violations: dict[str, list[str]] = field(default_factory=dict)
    checked_objects: int = 0

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def add(self, invariant: str, problems: list[str]) -> None:
        self.violations[invariant] = problems

    def summary(self) -> str:
        if self.ok:
            return f"all invariants hold ({self.checked_objects} S3 objects verified)"
        lines = []
        for invariant, problems in self.violations.items():
            if problems:
                lines.append(f"{invariant}: {len(problems)} violation(s), e.g. {problems[:3]}")
        return "\n".join(lines)


def _rows(conn: Connection, sql: str, batch: str | None) -> list[Any]:
    return list(conn.execute(text(sql), {"batch": batch}))


def check_invariants(
    conn: Connection,
    *,
    batch_id: str | None = None,
    verify_object: ObjectCheck | None = None,
    expect_all_terminal: bool = True,
) -> InvariantReport:
    """Check invariants 1-4 and 6 (5, one billed prediction per request, needs Replicate's side)."""
    report = InvariantReport()
    open_rows = _rows(
        conn,
        f"SELECT r.id, r.status, r.lease_expires_at < now() AS expired FROM generation_requests r"
        f" WHERE {_SCOPE} AND {sql_in(OPEN_STATUSES, 'r.status')}",
        batch_id,
    )
    report.add(
        "1 every request terminal, no expired lease",
        [
            f"request {r.id} is {r.status}{' with an expired lease' if r.expired else ''}"
            for r in open_rows
            if expect_all_terminal or r.expired
        ],
    )
    report.add(
        "2 at most one debit and one refund; refunds follow debits",
        [
            f"request {r.id}: {r.debits} debit(s), {r.refunds} refund(s)"
            for r in _rows(
                conn,
                f"""SELECT r.id, count(*) FILTER (WHERE l.kind = 'debit') AS debits,
                           count(*) FILTER (WHERE l.kind = 'refund') AS refunds
                    FROM generation_requests r JOIN credit_ledger l ON l.request_id = r.id
                    WHERE {_SCOPE} GROUP BY r.id""",
                batch_id,
            )
            if r.debits > 1 or r.refunds > 1 or r.refunds > r.debits
        ],
    )
    money = _rows(
        conn,
        f"""SELECT r.id, r.status, r.output_uris, r.outputs,
                   EXISTS (SELECT 1 FROM credit_ledger l
                           WHERE l.request_id = r.id AND l.kind = 'debit') AS debited,
                   EXISTS (SELECT 1 FROM credit_ledger l
                           WHERE l.request_id = r.id AND l.kind = 'refund') AS refunded
            FROM generation_requests r WHERE {_SCOPE}
              AND {sql_in(_TERMINAL, "r.status")}""",
        batch_id,
    )
    problems = []
    for r in money:
        if r.status == RequestStatus.SUCCEEDED and (not r.debited or r.refunded):
            problems.append(f"request {r.id} succeeded but debited={r.debited} refunded={r.refunded}")
        if r.status == RequestStatus.SUCCEEDED and not r.output_uris:
            problems.append(f"request {r.id} succeeded without any stored output")
        if r.status in (RequestStatus.FAILED, RequestStatus.CANCELED) and r.debited and not r.refunded:
            problems.append(f"request {r.id} {r.status} after a debit without a refund")
        if r.status == RequestStatus.REJECTED and r.debited:
            problems.append(f"request {r.id} rejected but debited")
    report.add("3 money follows the outcome", problems)
    if verify_object is not None:
        report.add(
            "3 every succeeded output is in S3 with its checksum",
            _check_objects(money, verify_object, report),
        )
    report.add(
        "4 balance = sum of ledger deltas >= 0",
        [
            f"{r.user_id}/{r.credit_type}: balance {r.balance}, ledger {r.ledger}"
            for r in _rows(
                conn,
                """SELECT a.user_id, a.credit_type, a.balance, COALESCE(sum(l.delta), 0) AS ledger
                   FROM credit_accounts a LEFT JOIN credit_ledger l
                     ON l.user_id = a.user_id AND l.credit_type = a.credit_type
                   WHERE CAST(:batch AS text) IS NULL OR a.user_id IN
                     (SELECT user_id FROM generation_requests WHERE batch_id = :batch)
                   GROUP BY a.user_id, a.credit_type, a.balance""",
                batch_id,
            )
            if r.balance != r.ledger or r.balance < 0
        ],
    )
    report.add(
        "6 terminal failures carry a reason",
        [
            f"request {r.id} is {r.status} without a reason"
            for r in _rows(
                conn,
                f"SELECT r.id, r.status FROM generation_requests r WHERE {_SCOPE}"
                f" AND {sql_in(_ENDED_WITH_A_REASON, 'r.status')} AND COALESCE(r.error, '') = ''",
                batch_id,
            )
        ],
    )
    return report


def _check_objects(rows: list[Any], verify_object: ObjectCheck, report: InvariantReport) -> list[str]:
    problems = []
    for r in rows:
        if r.status != RequestStatus.SUCCEEDED:
            continue
        outputs = r.outputs or []
        if [o["uri"] for o in outputs] != list(r.output_uris or []):
            problems.append(f"request {r.id}: output_uris and outputs disagree")
        for output in outputs:
            report.checked_objects += 1
            if not verify_object(output["uri"], output["sha256"]):
                problems.append(f"request {r.id}: {output['uri']} missing or checksum differs")
    return problems
