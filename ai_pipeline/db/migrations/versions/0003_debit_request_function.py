"""`debit_request`: charge a request once, in one round trip.

The debit used to be three statements from Python (lock the account, look for an earlier debit,
insert); every request of a run pays for it, so it is one function now, with the same order: the
account row is locked first, so operations on one account run one at a time and the "already
debited?" check cannot race. It returns the request's debit (new or earlier), or, when the balance
does not cover the amount, one row with no entry and the balance; nothing is written then.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION debit_request(p_request_id bigint, p_user_id text, p_credit_type text, p_amount bigint)
RETURNS TABLE (
    entry_id bigint, user_id text, credit_type text, delta bigint, kind text, request_id bigint,
    created_at timestamptz, balance bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    current_balance bigint;
BEGIN
    SELECT a.balance INTO current_balance FROM credit_accounts a
    WHERE a.user_id = p_user_id AND a.credit_type = p_credit_type
    FOR UPDATE;
    current_balance := COALESCE(current_balance, 0);
    RETURN QUERY
        SELECT l.id, l.user_id, l.credit_type, l.delta, l.kind, l.request_id, l.created_at, current_balance
        FROM credit_ledger l WHERE l.request_id = p_request_id AND l.kind = 'debit';
    IF FOUND THEN
        RETURN;
    END IF;
    IF current_balance < p_amount THEN
        RETURN QUERY SELECT NULL::bigint, p_user_id, p_credit_type, NULL::bigint, NULL::text, p_request_id,
            NULL::timestamptz, current_balance;
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO credit_ledger AS l (user_id, credit_type, delta, kind, request_id)
        VALUES (p_user_id, p_credit_type, -p_amount, 'debit', p_request_id)
        RETURNING l.id, l.user_id, l.credit_type, l.delta, l.kind, l.request_id, l.created_at,
            current_balance - p_amount;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION debit_request(bigint, text, text, bigint);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
