"""Error answers with Replicate's wording: ``application/problem+json`` bodies ``{title, detail, status}``."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

from ai_pipeline.dev.emulator.models import InputIssue

PROBLEM_CONTENT_TYPE = "application/problem+json"

UNAUTHENTICATED = ("Unauthenticated", "You did not pass a valid authentication token")
INVALID_VERSION = (
    "Invalid version or not permitted",
    "The specified version does not exist (or perhaps you don't have permission to use it?)",
)
NOT_FOUND = ("Not found", "The requested resource could not be found.")
BILLING_REQUIRED = (
    "Billing required",
    "You have reached the free time limit. To continue using Replicate, set up billing at"
    " https://replicate.com/account/billing#billing.",
)

# Gateway errors come from the edge proxy as HTML, not from the API.
_GATEWAY_HTML = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


class ProblemError(Exception):
    """Raised by a route to answer a problem response."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def response(self) -> Response:
        """The HTTP answer for this problem."""
        return Response(
            problem_body(self.status, self.title, self.detail, **self.extra),
            status_code=self.status,
            media_type=PROBLEM_CONTENT_TYPE,
        )


def problem_body(status: int, title: str, detail: str, **extra: Any) -> bytes:
    """A problem+json body."""
    return json.dumps({"title": title, "detail": detail, "status": status, **extra}).encode()


def input_validation_failed(issues: list[InputIssue]) -> ProblemError:
    """The 422 Replicate answers for input that does not match the model's schema."""
    return ProblemError(
        422,
        "Input validation failed",
        "".join(f"- {issue.field}: {issue.description}\n" for issue in issues),
        invalid_fields=[{"type": i.type, "field": i.field, "description": i.description} for i in issues],
    )


def throttled_body(retry_after: int) -> bytes:
    """Replicate's exact 429 body."""
    return json.dumps(
        {
            "detail": f"Request was throttled. Your rate limit resets in ~{retry_after}s.",
            "status": 429,
            "retry_after": retry_after,
        }
    ).encode()


def injected_error(status: int) -> tuple[bytes, str]:
    """Body and content type of an injected HTTP error: HTML for gateway errors, problem+json otherwise."""
    phrase = HTTPStatus(status).phrase
    if status in (502, 504):
        return _GATEWAY_HTML.format(status=status, phrase=phrase).encode(), "text/html"
    if status == 429:
        return throttled_body(1), PROBLEM_CONTENT_TYPE
    details = {
        500: "An unexpected error occurred. Please try again.",
        503: "The service is temporarily unavailable. Please try again later.",
    }
    return problem_body(status, phrase, details.get(status, phrase)), PROBLEM_CONTENT_TYPE
