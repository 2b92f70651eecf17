"""`submit_generation`: an API submission accepted and paid for in one round trip, or nothing recorded.

The original application route checks and debits credits, then records the generation. As one function
(one statement, atomic without a transaction around it) that is:

1. insert the pending request; `ON CONFLICT DO NOTHING` on the unique `external_id` and on
   `(application_id, idempotency_key)`: a retry of the same POST finds the first request instead of
   making a second. Concurrent retries are safe by the unique index itself: the second insert waits
   for the first transaction and then conflicts (no read-then-write);
2. debit it through `debit_request` (migration 0003: the account row locked, one debit per request);
3. a short balance deletes the row just inserted (nobody else could see it), so nothing is recorded,
   and the caller answers 402 with the balance.

The run later charges the request through `charge_request`, which finds this debit and charges nothing
twice; a failure or cancel refunds it as for any debited request.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION submit_generation(
    p_application_id text, p_idempotency_key text, p_external_id text, p_user_id text, p_model text,
    p_input jsonb, p_priority integer, p_webhook_url text, p_credit_type text, p_price bigint
)
RETURNS TABLE (outcome text, request_id bigint, created_at timestamptz, balance bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
    v_created timestamptz;
    d record;
BEGIN
    INSERT INTO generation_requests AS r (
        external_id, user_id, model, input, priority, application_id, webhook_url, idempotency_key,
        credits_charged
    )
    VALUES (
        p_external_id, p_user_id, p_model, p_input, p_priority, p_application_id, p_webhook_url,
        p_idempotency_key, p_price
    )
    ON CONFLICT DO NOTHING
    RETURNING r.id, r.created_at INTO v_id, v_created;
    IF v_id IS NULL THEN
        -- Submitted before (or the external id is another request's): the caller compares and answers.
        SELECT r.id INTO v_id FROM generation_requests r
        WHERE (p_idempotency_key IS NOT NULL AND r.application_id = p_application_id
               AND r.idempotency_key = p_idempotency_key)
           OR (p_external_id IS NOT NULL AND r.external_id = p_external_id)
        ORDER BY (r.idempotency_key IS NOT DISTINCT FROM p_idempotency_key) DESC
        LIMIT 1;
        RETURN QUERY SELECT 'existing'::text, v_id, NULL::timestamptz, NULL::bigint;
        RETURN;
    END IF;
    SELECT * INTO d FROM debit_request(v_id, p_user_id, p_credit_type, p_price);
    IF d.entry_id IS NULL THEN
        DELETE FROM generation_requests r WHERE r.id = v_id;
        RETURN QUERY SELECT 'insufficient'::text, NULL::bigint, NULL::timestamptz, d.balance;
        RETURN;
    END IF;
    RETURN QUERY SELECT 'created'::text, v_id, v_created, d.balance;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION submit_generation(text, text, text, text, text, jsonb, integer, text, text, bigint);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
