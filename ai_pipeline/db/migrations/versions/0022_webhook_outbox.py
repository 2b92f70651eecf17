"""Webhooks out: an outbox row written by the database in the same transaction as the status change.

A trigger `AFTER UPDATE OF status` on `generation_requests` covers every path that ends a request (the
run's settles, cancels, the sweeper, recovery, any other writer), so no code path can forget it and no
crash can separate the status from its event:

- a request with a `webhook_url` that becomes terminal → event `generation.<status>`, id `gen_<id>`;
- the last open request of a batch with a `webhook_url` → event `batch.completed`, id
  `batch_<batch>_<requests in it>` (a retry that adds a request later completes the batch anew, with a
  new count, so a new event). The batch row is locked first, so of two transactions ending the batch's
  last two requests at once, the second waits for the first and then sees both ended: exactly one of
  them writes the event. Only batches with a webhook pay for the lock.

The event id is unique, so an event is written once. The body is built from the row when the worker
first claims it and kept (`payload`), so every retry of a delivery sends the same bytes. Deliveries
are claimed under a lease like requests, so a worker killed mid-delivery leaves it to the next.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE webhook_outbox (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL UNIQUE,
    event_type       text NOT NULL,
    application_id   text,
    url              text NOT NULL,
    request_id       bigint,
    batch_id         text,
    payload          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    delivered_at     timestamptz,
    gave_up_at       timestamptz,
    last_status      integer,
    last_error       text,
    CHECK (num_nonnulls(request_id, batch_id) >= 1)
);
-- Deliveries still to make, by when they are due: rows leave the index once delivered or given up.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;

CREATE FUNCTION generation_requests_webhook_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    b record;
    total bigint;
BEGIN
    IF NEW.webhook_url IS NOT NULL THEN
        INSERT INTO webhook_outbox (event_id, event_type, application_id, url, request_id)
        VALUES ('gen_' || NEW.id, 'generation.' || NEW.status, NEW.application_id, NEW.webhook_url, NEW.id)
        ON CONFLICT (event_id) DO NOTHING;
    END IF;
    IF NEW.batch_id IS NOT NULL THEN
        SELECT id, application_id, webhook_url INTO b FROM batches
        WHERE id = NEW.batch_id AND webhook_url IS NOT NULL
        FOR UPDATE;
        IF FOUND AND NOT EXISTS (
            SELECT 1 FROM generation_requests r
            WHERE r.batch_id = NEW.batch_id AND r.status IN ('pending', 'processing')
        ) THEN
            SELECT count(*) INTO total FROM generation_requests r WHERE r.batch_id = NEW.batch_id;
            INSERT INTO webhook_outbox (event_id, event_type, application_id, url, batch_id)
            VALUES ('batch_' || b.id || '_' || total, 'batch.completed', b.application_id, b.webhook_url,
                    b.id)
            ON CONFLICT (event_id) DO NOTHING;
        END IF;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER generation_requests_webhook_events
    AFTER UPDATE OF status ON generation_requests
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('succeeded', 'failed', 'rejected', 'canceled'))
    EXECUTE FUNCTION generation_requests_webhook_events();
"""

DOWNGRADE = r"""
DROP TRIGGER generation_requests_webhook_events ON generation_requests;
DROP FUNCTION generation_requests_webhook_events();
DROP TABLE webhook_outbox;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
