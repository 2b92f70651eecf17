"""Database URL handling."""

from __future__ import annotations

from sqlalchemy.engine import make_url


class DatabaseUrlError(ValueError):
    """The configured database URL is not a usable Postgres URL."""


def normalise_database_url(url: str) -> str:
    """Return `url` with the psycopg2 driver made explicit.

    SQLAlchemy 2.1 maps a bare `postgresql://` (and the Heroku-style `postgres://`) to psycopg 3, which
    is not installed, so both are rewritten to `postgresql+psycopg2://`.
    """
    text = url.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://") :]
    try:
        parsed = make_url(text)
    except Exception as exc:
        raise DatabaseUrlError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseUrlError(f"only Postgres is supported, got {parsed.get_backend_name()!r} in {url!r}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)
