"""Why an output could not be fetched, and whether trying again can help.

`transient` is what the pipeline acts on: a transient error is retried with backoff, a permanent one
fails the request (and refunds it). Messages name the host and path only: query strings of delivery URLs
may carry signatures, so they never reach an exception, a log line or the UI.
"""

from __future__ import annotations

import httpx


def redact_url(url: str | httpx.URL) -> str:
    """Scheme, host, port and path of a URL: what may be logged. Query, fragment, userinfo dropped."""
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
        return str(parsed.copy_with(query=None, fragment=None, userinfo=b""))
    except Exception:
        return "<unparseable url>"


class OutputFetchError(Exception):
    """An output could not be fetched. `url` is the redacted URL (scheme, host, port, path)."""

    transient: bool = False

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class OutputGone(OutputFetchError):
    """The delivery host no longer has the file (404/410, or access to it was revoked): permanent."""

    transient = False


class OutputRefused(OutputFetchError):
    """We will not fetch it: bad scheme, host not allowed, private address, too large, too many redirects."""

    transient = False


class OutputUnavailable(OutputFetchError):
    """The host could not deliver right now (5xx, 429, timeout, connection error, DNS): retry later."""

    transient = True
