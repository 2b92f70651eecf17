"""Applications and their API keys: what `ai-pipeline keys` writes and what the service checks.

Keys are stored as their SHA-256 (`service/keys.py` makes them and says why a fast hash is right);
a key belongs to one application, and a revoked key stays listed with its `revoked_at`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from ai_pipeline.db.transactions import one_statement


@dataclass(frozen=True)
class KeyRecord:
    """One key as `keys list` shows it (never the key itself)."""

    id: str
    application_id: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


def ensure_application(conn: Connection, application_id: str, webhook_secret: str) -> str:
    """Create the application unless it exists; return its webhook signing secret (the first one kept)."""
    conn.execute(
        text(
            "INSERT INTO api_applications (id, webhook_secret) VALUES (:id, :secret)"
            " ON CONFLICT (id) DO NOTHING"
        ),
        {"id": application_id, "secret": webhook_secret},
    )
    return str(
        conn.execute(
            text("SELECT webhook_secret FROM api_applications WHERE id = :id"), {"id": application_id}
        ).scalar_one()
    )


def webhook_secret(conn: Connection, application_id: str) -> str | None:
    """The secret the application's webhooks are signed with."""
    value = conn.execute(
        text("SELECT webhook_secret FROM api_applications WHERE id = :id"), {"id": application_id}
    ).scalar_one_or_none()
    return None if value is None else str(value)


def insert_key(
    conn: Connection, key_id: str, application_id: str, key_hash: bytes, label: str | None
) -> None:
    """Store a new key's hash for the application."""
    conn.execute(
        text("INSERT INTO api_keys (id, application_id, key_hash, label) VALUES (:id, :app, :hash, :label)"),
        {"id": key_id, "app": application_id, "hash": key_hash, "label": label},
    )


def list_keys(conn: Connection, application_id: str | None = None) -> list[KeyRecord]:
    """Every key (of one application, when named), oldest first."""
    rows = conn.execute(
        text(
            "SELECT id, application_id, label, created_at, revoked_at FROM api_keys"
            " WHERE CAST(:app AS text) IS NULL OR application_id = :app ORDER BY created_at, id"
        ),
        {"app": application_id},
    )
    return [KeyRecord(**row._mapping) for row in rows]


def revoke_key(conn: Connection, key_id: str) -> bool:
    """Revoke a key; False when there is no such key. Revoking twice keeps the first time."""
    row = conn.execute(
        text("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = :id RETURNING id"),
        {"id": key_id},
    ).first()
    return row is not None


_KEY_OWNER = text("SELECT id, application_id FROM api_keys WHERE key_hash = :hash AND revoked_at IS NULL")


@one_statement
def key_owner(conn: Connection, key_hash: bytes) -> tuple[str, str] | None:
    """(key id, application id) of a live key with this hash, or None (unknown or revoked)."""
    row = conn.execute(_KEY_OWNER, {"hash": key_hash}).first()
    return None if row is None else (row.id, row.application_id)
