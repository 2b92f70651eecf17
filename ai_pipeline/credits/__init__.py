"""The credit ledger: money moves only through `grant`, `debit` and `refund`."""

from ai_pipeline.credits.ledger import (
    DEFAULT_CREDIT_TYPE,
    Charge,
    InsufficientCredits,
    LedgerEntry,
    RefundWithoutDebit,
    balance,
    debit,
    grant,
    ledger_sum,
    refund,
)

__all__ = [
    "DEFAULT_CREDIT_TYPE",
    "Charge",
    "InsufficientCredits",
    "LedgerEntry",
    "RefundWithoutDebit",
    "balance",
    "debit",
    "grant",
    "ledger_sum",
    "refund",
]
