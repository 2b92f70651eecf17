"""The HTTP API's tables: applications, their API keys, and what each submission belongs to.

- `api_applications`: an application (the web app that authenticates its own users) and the secret its
  webhooks are signed with (Standard Webhooks, `whsec_...`; kept readable: the service signs with it).
- `api_keys`: an application's keys, stored as the SHA-256 of the key (the key itself is shown once);
  a key is 32 random bytes, so a fast hash is enough: there is nothing to guess that a slow hash would
  protect, and checking one costs microseconds per request.
- `generation_requests.application_id` (who submitted it through the API: another application's id is
  404), `.webhook_url` (where its terminal event goes), `.idempotency_key` (unique per application, so a
  retried POST finds the first request instead of making a second: the unique index is the race guard).
  No foreign key to `api_applications`: every submission would lock the application's row.
- `batches.application_id`, `.webhook_url`, `.cancel_requested_at`: batches uploaded through the API.
- `api_batch_submissions`: Idempotency-Key of a batch upload → its batch and the first answer.
- `batch_refusals`: rows refused when a batch was uploaded through the API (its errors file).

Revision ID: 0020
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0020"
down_revision = "0013"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE api_applications (
    id             text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    webhook_secret text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id             text PRIMARY KEY,
    application_id text NOT NULL REFERENCES api_applications (id),
    key_hash       bytea NOT NULL UNIQUE,
    label          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
CREATE INDEX api_keys_application ON api_keys (application_id);

ALTER TABLE generation_requests
    ADD COLUMN application_id  text,
    ADD COLUMN webhook_url     text,
    ADD COLUMN idempotency_key text;
CREATE INDEX generation_requests_application
    ON generation_requests (application_id, id)
    WHERE application_id IS NOT NULL;
CREATE UNIQUE INDEX generation_requests_idempotency
    ON generation_requests (application_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

ALTER TABLE batches
    ADD COLUMN application_id      text,
    ADD COLUMN webhook_url         text,
    ADD COLUMN cancel_requested_at timestamptz;
CREATE INDEX batches_application ON batches (application_id, id) WHERE application_id IS NOT NULL;

CREATE TABLE api_batch_submissions (
    application_id  text NOT NULL,
    idempotency_key text NOT NULL,
    fingerprint     text NOT NULL,
    batch_id        text NOT NULL,
    status_code     integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, idempotency_key)
);

CREATE TABLE batch_refusals (
    batch_id    text NOT NULL,
    row_number  bigint NOT NULL,
    reason_code text NOT NULL,
    message     text NOT NULL,
    PRIMARY KEY (batch_id, row_number)
);
"""

DOWNGRADE = r"""
DROP TABLE batch_refusals;
DROP TABLE api_batch_submissions;
DROP INDEX batches_application;
ALTER TABLE batches DROP COLUMN cancel_requested_at, DROP COLUMN webhook_url, DROP COLUMN application_id;
DROP INDEX generation_requests_idempotency;
DROP INDEX generation_requests_application;
ALTER TABLE generation_requests
    DROP COLUMN idempotency_key, DROP COLUMN webhook_url, DROP COLUMN application_id;
DROP TABLE api_keys;
DROP TABLE api_applications;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
