"""`charge_request`: the whole charge of a request in one statement, safe to run on its own.

A run charges every request it creates a prediction for: lock the request row (still held by this
run?), record the intent and renew the lease, debit (`debit_request`), and undo the intent when the
balance is short. As one function this is one round trip, and atomic even outside a transaction, so
the run needs no BEGIN/COMMIT around it. Lock order as before: the request row, then the account row.
`held` is false (and nothing is written) when the run no longer holds the request; `entry_id` is NULL
when the balance did not cover the amount.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION charge_request(
    p_request_id bigint, p_owner text, p_user_id text, p_credit_type text, p_amount bigint,
    p_lease_seconds double precision
)
RETURNS TABLE (
    held boolean, entry_id bigint, user_id text, credit_type text, delta bigint, kind text,
    request_id bigint, created_at timestamptz, balance bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    d record;
BEGIN
    UPDATE generation_requests r
    SET credits_charged = p_amount, prediction_intent_at = now(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds), updated_at = now()
    WHERE r.id = p_request_id AND r.status = 'processing' AND r.lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint, p_user_id, p_credit_type, NULL::bigint, NULL::text,
            p_request_id, NULL::timestamptz, NULL::bigint;
        RETURN;
    END IF;
    SELECT * INTO d FROM debit_request(p_request_id, p_user_id, p_credit_type, p_amount);
    IF d.entry_id IS NULL THEN
        -- Never debited, so it had no intent before this one either.
        UPDATE generation_requests r SET credits_charged = 0, prediction_intent_at = NULL
        WHERE r.id = p_request_id;
    ELSIF -d.delta <> p_amount THEN
        -- Debited on an earlier attempt, at an earlier price.
        UPDATE generation_requests r SET credits_charged = -d.delta WHERE r.id = p_request_id;
    END IF;
    RETURN QUERY SELECT true, d.entry_id, d.user_id, d.credit_type, d.delta, d.kind, d.request_id,
        d.created_at, d.balance;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION charge_request(bigint, text, text, text, bigint, double precision);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
