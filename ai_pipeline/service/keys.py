"""API keys: made here, shown once, stored as a hash, checked on every request.

A key is `aip_` + 32 random bytes (URL-safe base64). It is stored as its SHA-256 only. A slow password
hash (bcrypt, argon2) protects low-entropy secrets people choose; a 256-bit random key cannot be guessed
from its hash whatever the hash costs, so a fast hash loses nothing and keeps the check at microseconds
per request (one indexed lookup of the hash). A stolen database yields hashes, not keys.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection

from ai_pipeline.db import api_keys

KEY_PREFIX = "aip_"


@dataclass(frozen=True)
class NewKey:
    """A key just made: `key` is shown once and never stored."""

    id: str
    application_id: str
    key: str
    webhook_secret: str


def hash_key(key: str) -> bytes:
    """What is stored for `key`, and looked up when it is presented."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def create_key(conn: Connection, application_id: str, label: str | None = None) -> NewKey:
    """A new key for the application (made on first use, with its webhook signing secret)."""
    secret = api_keys.ensure_application(conn, application_id, new_webhook_secret())
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(6)
    api_keys.insert_key(conn, key_id, application_id, hash_key(key), label)
    return NewKey(id=key_id, application_id=application_id, key=key, webhook_secret=secret)
