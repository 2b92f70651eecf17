"""SQLAlchemy Core descriptions of the tables, for building queries.

The migrations in `migrations/versions` own the schema; these mirror it (a test checks they agree).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    Numeric,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

metadata = MetaData()

batches = Table(
    "batches",
    metadata,
    Column("id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("source", Text),
    Column("rows_loaded", BigInteger, nullable=False),
    Column("rows_refused", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("application_id", Text),
    Column("webhook_url", Text),
    Column("cancel_requested_at", DateTime(timezone=True)),
)

models = Table(
    "models",
    metadata,
    Column("name", Text, primary_key=True),
    Column("replicate_model", Text),
    Column("replicate_version", Text),
    Column("replicate_deployment", Text),
    Column("credit_type", Text, nullable=False),
    Column("credits_per_run", BigInteger, nullable=False),
    Column("max_in_flight", Integer),
    Column("usd_per_second", Numeric(12, 8)),
    Column("enabled", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

generation_requests = Table(
    "generation_requests",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("external_id", Text, unique=True),
    Column("batch_id", Text),
    Column("user_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("input", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("prediction_id", Text),
    Column("prediction_intent_at", DateTime(timezone=True)),
    Column("cancel_requested_at", DateTime(timezone=True)),
    Column("error", Text),
    Column("retryable", Boolean),
    Column("retry_of", BigInteger, unique=True),
    Column("output_uris", JSONB),
    Column("outputs", JSONB),
    Column("credits_charged", BigInteger, nullable=False),
    Column("predict_time", Float),
    Column("source_row", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("application_id", Text),
    Column("webhook_url", Text),
    Column("idempotency_key", Text),
)

credit_accounts = Table(
    "credit_accounts",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("credit_type", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("credit_type", Text, nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("request_id", BigInteger),
    Column("idempotency_key", Text, unique=True),
    Column("note", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

rate_limit_buckets = Table(
    "rate_limit_buckets",
    metadata,
    Column("name", Text, primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("capacity", Float, nullable=False),
    Column("refill_per_second", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

circuit_breakers = Table(
    "circuit_breakers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("opened_at", DateTime(timezone=True)),
    Column("probe_at", DateTime(timezone=True)),
    Column("cooldown_seconds", Float, nullable=False),
    Column("probe_owner", Text),
    Column("probe_expires_at", DateTime(timezone=True)),
    Column("closed_at", DateTime(timezone=True)),
    Column("generation", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

flight_pools = Table(
    "flight_pools",
    metadata,
    Column("name", Text, primary_key=True),
    Column("capacity", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

flight_holds = Table(
    "flight_holds",
    metadata,
    Column("pool", Text, primary_key=True),
    Column("owner", Text, primary_key=True),
    Column("held", Integer, nullable=False),
    Column("wanted", Integer, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

request_transitions = Table(
    "request_transitions",
    metadata,
    Column("from_status", Text, primary_key=True),
    Column("to_status", Text, primary_key=True),
    Column("move", Text, nullable=False),
)

api_applications = Table(
    "api_applications",
    metadata,
    Column("id", Text, primary_key=True),
    Column("webhook_secret", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("application_id", Text, nullable=False),
    Column("key_hash", BYTEA, nullable=False, unique=True),
    Column("label", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

api_batch_submissions = Table(
    "api_batch_submissions",
    metadata,
    Column("application_id", Text, primary_key=True),
    Column("idempotency_key", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("status_code", Integer),
    Column("response", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

batch_refusals = Table(
    "batch_refusals",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("row_number", BigInteger, primary_key=True),
    Column("reason_code", Text, nullable=False),
    Column("message", Text, nullable=False),
)

webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("event_id", Text, nullable=False, unique=True),
    Column("event_type", Text, nullable=False),
    Column("application_id", Text),
    Column("url", Text, nullable=False),
    Column("request_id", BigInteger),
    Column("batch_id", Text),
    Column("payload", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    Column("gave_up_at", DateTime(timezone=True)),
    Column("last_status", Integer),
    Column("last_error", Text),
)
