"""Errors in one shape, RFC 9457 problem details (`application/problem+json`), for every error the
service answers: its own, the framework's (404, 405, 422) and anything unexpected (500, logged here,
never its traceback to the client)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ai-pipeline:problem:"


class Problem(Exception):
    """An answer that is an error: HTTP status, a stable `code` (the problem type), a title for people,
    a detail about this occurrence, and extension members (`balance`, `errors`, ...)."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"type": TYPE_PREFIX + self.code, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


def problem_response(problem: Problem, request: Request | None = None) -> Response:
    instance = request.url.path if request is not None else None
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


_STATUS_CODES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def _http_problem(exc: StarletteHTTPException) -> Problem:
    code, title = _STATUS_CODES.get(exc.status_code, ("http-error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail.lower() != title.lower() else None
    return Problem(exc.status_code, code, title, detail, headers=dict(exc.headers or {}))


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def invalid(errors: list[dict[str, Any]], detail: str | None = None) -> Problem:
    """422: the request was understood but breaks a rule; `errors` lists {field, code, message}."""
    first = errors[0] if errors else {}
    return Problem(
        422,
        "invalid-request",
        "The request is not valid",
        detail or (f"{first.get('field')}: {first.get('message')}" if first else None),
        errors=errors,
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Every error the app answers, as problem details."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc, request)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(_http_problem(exc), request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "field": _field(error.get("loc", ())),
                "code": str(error.get("type")),
                "message": str(error.get("msg")),
            }
            for error in exc.errors()
        ]
        return problem_response(invalid(errors), request)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        problem = Problem(500, "internal-error", "Internal error", "the error was logged; try again later")
        return problem_response(problem, request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
