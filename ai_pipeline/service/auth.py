"""Every endpoint needs a key: `Authorization: Bearer aip_...`. The key names the application the
request acts for; a missing, unknown or revoked key is 401, and the rate limit is counted per key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ai_pipeline.service.context import ServiceContext
from ai_pipeline.service.keys import KEY_PREFIX, hash_key
from ai_pipeline.service.problems import Problem

bearer = HTTPBearer(auto_error=False, description="An API key made with `ai-pipeline keys create APP`.")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's id and the application it belongs to."""

    key_id: str
    application_id: str


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401, "unauthorized", "Missing or invalid API key", detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def context_of(request: Request) -> ServiceContext:
    """The service's shared parts (async: FastAPI runs a plain function dependency on a thread)."""
    context: ServiceContext = request.app.state.context
    return context


async def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    """The calling application, from its key; 401 otherwise, 429 past the key's rate."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send the key as `Authorization: Bearer <key>`")
    key = credentials.credentials
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        raise _unauthorized("the key is not valid")
    context: ServiceContext = request.app.state.context
    owner = await context.key_owner(hash_key(key))
    if owner is None:
        raise _unauthorized("the key is not valid, or was revoked")
    key_id, application_id = owner
    context.rate_limiter.take(key_id)
    return Caller(key_id=key_id, application_id=application_id)


CallerDep = Annotated[Caller, Depends(caller)]
ContextDep = Annotated[ServiceContext, Depends(context_of)]
