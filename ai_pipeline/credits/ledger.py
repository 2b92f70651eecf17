"""Grant, debit, refund and balance: the only ways credits move.

Every function takes a `Connection` inside the caller's transaction, so a debit can commit together
with the request's own status change. The database backs every rule (see the initial migration): the
balance is maintained by a trigger from the ledger rows, cannot go below zero, one debit and one refund
per request at most, and a refund must match a debit.

Concurrency: each operation first locks the account row, so operations on one account run one at a
time and the "already debited?" checks below cannot race.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ai_pipeline.db.tables import credit_accounts, credit_ledger

DEFAULT_CREDIT_TYPE = "image_generation"


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger."""

    id: int
    user_id: str
    credit_type: str
    delta: int
    kind: str
    request_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class Charge:
    """What a request costs: who pays, in which credit type, how much."""

    request_id: int
    user_id: str
    credit_type: str
    amount: int


@dataclass(frozen=True)
class InsufficientCredits:
    """A debit was refused: the balance does not cover it. Nothing was written."""

    request_id: int
    balance: int
    needed: int

    @property
    def reason(self) -> str:
        return f"insufficient credits: balance {self.balance}, needed {self.needed}"


_DEBIT_REQUEST = text(
    "SELECT entry_id AS id, user_id, credit_type, delta, kind, request_id, created_at, balance"
    " FROM debit_request(:request_id, :user_id, :credit_type, :amount)"
)


class RefundWithoutDebit(ValueError):
    """A refund was asked for a request that was never debited."""


def _entry(row: Row[Any]) -> LedgerEntry:
    return LedgerEntry(
        id=row.id,
        user_id=row.user_id,
        credit_type=row.credit_type,
        delta=row.delta,
        kind=row.kind,
        request_id=row.request_id,
        created_at=row.created_at,
    )


def _lock_account(conn: Connection, user_id: str, credit_type: str) -> int | None:
    """Lock the account row and return its balance (None when the account does not exist)."""
    return conn.execute(
        select(credit_accounts.c.balance)
        .where(credit_accounts.c.user_id == user_id, credit_accounts.c.credit_type == credit_type)
        .with_for_update()
    ).scalar_one_or_none()


def _request_entry(conn: Connection, request_id: int, kind: str) -> LedgerEntry | None:
    row = conn.execute(
        select(credit_ledger).where(credit_ledger.c.request_id == request_id, credit_ledger.c.kind == kind)
    ).first()
    return _entry(row) if row is not None else None


def _insert(conn: Connection, **values: object) -> LedgerEntry:
    row = conn.execute(pg_insert(credit_ledger).values(**values).returning(credit_ledger)).one()
    return _entry(row)


def grant(
    conn: Connection,
    user_id: str,
    amount: int,
    credit_type: str = DEFAULT_CREDIT_TYPE,
    *,
    idempotency_key: str | None = None,
    note: str | None = None,
) -> LedgerEntry:
    """Add `amount` (> 0) credits to an account, creating it if needed.

    With an `idempotency_key`, a repeated grant returns the first entry instead of granting again.
    """
    if amount <= 0:
        raise ValueError(f"a grant must be positive, got {amount}")
    if idempotency_key is not None:
        existing = conn.execute(
            select(credit_ledger).where(credit_ledger.c.idempotency_key == idempotency_key)
        ).first()
        if existing is not None:
            return _entry(existing)
    return _insert(
        conn,
        user_id=user_id,
        credit_type=credit_type,
        delta=amount,
        kind="grant",
        idempotency_key=idempotency_key,
        note=note,
    )


def debit(conn: Connection, charge: Charge) -> LedgerEntry | InsufficientCredits:
    """Charge a request once. A repeat call returns the first debit; a short balance is refused.

    One round trip: the database's `debit_request` locks the account, looks for an earlier debit and
    inserts (see migration 0003); every request of a run pays for this call.
    """
    row = conn.execute(
        _DEBIT_REQUEST,
        {
            "request_id": charge.request_id,
            "user_id": charge.user_id,
            "credit_type": charge.credit_type,
            "amount": charge.amount,
        },
    ).one()
    return debit_outcome(row, charge)


def debit_outcome(row: Row[Any], charge: Charge) -> LedgerEntry | InsufficientCredits:
    """A row shaped like `debit_request`'s answer (its `entry_id` selected as `id`), as the debit it names
    or the shortfall it reports."""
    if row.id is None:
        return InsufficientCredits(request_id=charge.request_id, balance=row.balance, needed=charge.amount)
    return _entry(row)


def refund(conn: Connection, request_id: int) -> LedgerEntry:
    """Give back what a request was debited, once. A repeat call returns the first refund.

    Raises `RefundWithoutDebit` when the request was never debited.
    """
    debit_entry = _request_entry(conn, request_id, "debit")
    if debit_entry is None:
        raise RefundWithoutDebit(f"request {request_id} was never debited; there is nothing to refund")
    _lock_account(conn, debit_entry.user_id, debit_entry.credit_type)
    existing = _request_entry(conn, request_id, "refund")
    if existing is not None:
        return existing
    return _insert(
        conn,
        user_id=debit_entry.user_id,
        credit_type=debit_entry.credit_type,
        delta=-debit_entry.delta,
        kind="refund",
        request_id=request_id,
    )


def refunded_entry(conn: Connection, request_id: int) -> LedgerEntry | None:
    """The request's refund, if it has one."""
    return _request_entry(conn, request_id, "refund")


def debited_entry(conn: Connection, request_id: int) -> LedgerEntry | None:
    """The request's debit, if it has one."""
    return _request_entry(conn, request_id, "debit")


def balance(conn: Connection, user_id: str, credit_type: str = DEFAULT_CREDIT_TYPE) -> int:
    """The account's balance (0 for an account that does not exist yet)."""
    value = conn.execute(
        select(credit_accounts.c.balance).where(
            credit_accounts.c.user_id == user_id, credit_accounts.c.credit_type == credit_type
        )
    ).scalar_one_or_none()
    return int(value or 0)


def ledger_sum(conn: Connection, user_id: str, credit_type: str = DEFAULT_CREDIT_TYPE) -> int:
    """The sum of the account's ledger deltas: always equal to its balance."""
    value = conn.execute(
        select(func.coalesce(func.sum(credit_ledger.c.delta), 0)).where(
            credit_ledger.c.user_id == user_id, credit_ledger.c.credit_type == credit_type
        )
    ).scalar_one()
    return int(value)
