"""Initial schema: requests, batches, the model catalogue, the credit ledger, rate-limit buckets.

Written as plain SQL so the constraints, partial indexes and ledger triggers read exactly as Postgres
will enforce them. The ledger rules live in the database too, because other programs write these tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE batches (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$'),
    kind        text NOT NULL DEFAULT 'bulk' CHECK (kind IN ('bulk', 'rolling')),
    source      text,
    rows_loaded bigint NOT NULL DEFAULT 0,
    rows_refused bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    name                 text PRIMARY KEY,
    replicate_model      text,
    replicate_version    text,
    replicate_deployment text,
    credit_type          text NOT NULL DEFAULT 'image_generation',
    credits_per_run      bigint NOT NULL CHECK (credits_per_run >= 0),
    max_in_flight        integer CHECK (max_in_flight > 0),
    usd_per_second       numeric(12, 8),
    enabled              boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(replicate_model, replicate_version, replicate_deployment) >= 1)
);

CREATE TABLE generation_requests (
    id                   bigserial PRIMARY KEY,
    external_id          text UNIQUE,
    batch_id             text,
    user_id              text NOT NULL,
    model                text NOT NULL,
    input                jsonb NOT NULL,
    status               text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'succeeded', 'failed', 'rejected', 'canceled')),
    priority             integer NOT NULL DEFAULT 0,
    attempts             integer NOT NULL DEFAULT 0,
    available_at         timestamptz NOT NULL DEFAULT now(),
    lease_owner          text,
    lease_expires_at     timestamptz,
    prediction_id        text,
    prediction_intent_at timestamptz,
    cancel_requested_at  timestamptz,
    error                text,
    -- For failed rows: whether trying again could succeed (a timeout could; an NSFW refusal would not).
    retryable            boolean,
    -- A failed request is never re-charged: reprocessing it inserts a new request that points here.
    retry_of             bigint UNIQUE REFERENCES generation_requests (id),
    output_uris          jsonb,
    outputs              jsonb,
    credits_charged      bigint NOT NULL DEFAULT 0,
    predict_time         double precision,
    source_row           bigint,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    completed_at         timestamptz,
    CHECK (jsonb_typeof(input) = 'object'),
    CHECK (status <> 'processing' OR lease_expires_at IS NOT NULL)
);

-- Finding and claiming due work: only pending rows are indexed, so the index stays as small as the
-- backlog however many millions of finished rows pile up.
CREATE INDEX generation_requests_pending
    ON generation_requests (batch_id, priority DESC, available_at, id)
    WHERE status = 'pending';
-- Finding runs that died: only rows under a lease.
CREATE INDEX generation_requests_leases
    ON generation_requests (lease_expires_at)
    WHERE status = 'processing';
-- Per-batch status counts and manifests.
CREATE INDEX generation_requests_batch_status ON generation_requests (batch_id, status);
-- A prediction belongs to one request at most.
CREATE UNIQUE INDEX generation_requests_prediction
    ON generation_requests (prediction_id)
    WHERE prediction_id IS NOT NULL;

CREATE TABLE credit_accounts (
    user_id     text NOT NULL,
    credit_type text NOT NULL,
    balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, credit_type)
);

CREATE TABLE credit_ledger (
    id              bigserial PRIMARY KEY,
    user_id         text NOT NULL,
    credit_type     text NOT NULL,
    delta           bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('grant', 'debit', 'refund')),
    request_id      bigint REFERENCES generation_requests (id),
    idempotency_key text UNIQUE,
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (
        (kind = 'grant' AND delta > 0 AND request_id IS NULL)
        OR (kind = 'debit' AND delta <= 0 AND request_id IS NOT NULL)
        OR (kind = 'refund' AND delta >= 0 AND request_id IS NOT NULL)
    )
);
-- At most one debit and one refund per request.
CREATE UNIQUE INDEX credit_ledger_one_per_request
    ON credit_ledger (request_id, kind)
    WHERE request_id IS NOT NULL;
CREATE INDEX credit_ledger_account ON credit_ledger (user_id, credit_type);

-- The balance is derived from the ledger by the database itself: every ledger row moves it, nothing
-- else does, and the CHECK above refuses any row that would take it below zero.
CREATE FUNCTION credit_ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE credit_accounts SET balance = balance + NEW.delta, updated_at = now()
    WHERE user_id = NEW.user_id AND credit_type = NEW.credit_type;
    IF NOT FOUND THEN
        -- (The CHECK applies to the proposed row before ON CONFLICT, hence update first.)
        INSERT INTO credit_accounts AS a (user_id, credit_type, balance)
        VALUES (NEW.user_id, NEW.credit_type, NEW.delta)
        ON CONFLICT (user_id, credit_type)
        DO UPDATE SET balance = a.balance + EXCLUDED.balance, updated_at = now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER credit_ledger_apply AFTER INSERT ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_apply();

CREATE FUNCTION credit_ledger_refund_follows_debit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM credit_ledger
        WHERE request_id = NEW.request_id AND kind = 'debit' AND delta = -NEW.delta
          AND user_id = NEW.user_id AND credit_type = NEW.credit_type
    ) THEN
        RAISE EXCEPTION 'refund without a matching debit for request %', NEW.request_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER credit_ledger_refund_follows_debit BEFORE INSERT ON credit_ledger
    FOR EACH ROW WHEN (NEW.kind = 'refund') EXECUTE FUNCTION credit_ledger_refund_follows_debit();

CREATE FUNCTION credit_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_ledger is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION credit_ledger_append_only();
CREATE TRIGGER credit_ledger_no_truncate BEFORE TRUNCATE ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION credit_ledger_append_only();

-- Token buckets shared by every run (Replicate's create limit is per account, not per process).
CREATE TABLE rate_limit_buckets (
    name              text PRIMARY KEY,
    tokens            double precision NOT NULL,
    capacity          double precision NOT NULL CHECK (capacity > 0),
    refill_per_second double precision NOT NULL CHECK (refill_per_second > 0),
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

DOWNGRADE = r"""
DROP TABLE rate_limit_buckets;
DROP TABLE credit_ledger;
DROP FUNCTION credit_ledger_apply, credit_ledger_refund_follows_debit, credit_ledger_append_only;
DROP TABLE credit_accounts;
DROP TABLE generation_requests;
DROP TABLE models;
DROP TABLE batches;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
