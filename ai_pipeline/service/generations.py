"""`/v1/generations`: submit one generation (checked like a loaded row, paid at once or 402), read it
back with presigned output URLs, list them, cancel one."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse, Response

from ai_pipeline.canonical import canonical_json
from ai_pipeline.db import submissions
from ai_pipeline.db.cancels import cancel_requests
from ai_pipeline.db.submissions import Accepted, ShortOfCredits, Submission
from ai_pipeline.loading.validation import AcceptedRow, Reason, Refusal, validate_row
from ai_pipeline.service import views
from ai_pipeline.service.auth import CallerDep, ContextDep
from ai_pipeline.service.context import ServiceContext
from ai_pipeline.service.problems import Problem, invalid
from ai_pipeline.service.schemas import Generation, GenerationCreate, GenerationList, problem_responses
from ai_pipeline.service.webhooks import WebhookRefused

router = APIRouter(tags=["generations"])

RequestId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The generation's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retrying a POST with the same key returns the first answer and records nothing new",
    ),
]

# Which field a loader refusal is about (the text rules name their column first in the message).
_REASON_FIELDS = {
    Reason.INVALID_USER_ID: "user_id",
    Reason.UNKNOWN_MODEL: "model",
    Reason.MODEL_DISABLED: "model",
    Reason.BOTH_PROMPT_AND_INPUT: "input",
    Reason.NO_PROMPT_OR_INPUT: "input",
    Reason.EMPTY_PROMPT: "prompt",
    Reason.PROMPT_NOT_TEXT: "prompt",
    Reason.PROMPT_TOO_LONG: "prompt",
    Reason.INVALID_INPUT_JSON: "input",
    Reason.INPUT_NOT_OBJECT: "input",
    Reason.INPUT_TOO_LARGE: "input",
    Reason.INVALID_EXTERNAL_ID: "external_id",
    Reason.EXTERNAL_ID_TOO_LONG: "external_id",
    Reason.EXTERNAL_ID_TAKEN: "external_id",
    Reason.INVALID_PRIORITY: "priority",
}
_FIELDS = ("user_id", "model", "prompt", "input", "external_id", "priority")


def refusal_error(refusal: Refusal) -> dict[str, Any]:
    """A loader refusal as a 422 entry: the field, the loader's reason code, its message."""
    field = _REASON_FIELDS.get(refusal.reason)
    if field is None:
        first_word = refusal.message.split(" ", 1)[0]
        field = first_word if first_word in _FIELDS else None
    return {"field": field, "code": refusal.reason.value, "message": refusal.message}


def _sorted(value: dict[str, Any]) -> dict[str, Any]:
    """The input with its keys in canonical order, so an answer's bytes do not depend on where it came
    from (the request as sent, or `jsonb` read back)."""

    result: dict[str, Any] = json.loads(canonical_json(value))
    return result


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


@router.post(
    "/v1/generations",
    status_code=201,
    response_model=Generation,
    responses=problem_responses(402, 409, 413, 422),
    summary="Submit a generation",
)
async def create_generation(
    body: GenerationCreate, caller: CallerDep, context: ContextDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Checked like a row of a batch file; the user's credits are debited at once (402 with the balance
    and price when short, and nothing is recorded); then the pipeline runs it. A retry with the same
    `Idempotency-Key` (or `external_id`) returns the first answer."""
    catalogue = await context.catalogue()
    values = body.model_dump(include=set(_FIELDS), exclude_none=True)
    row = validate_row(1, values, catalogue)
    if isinstance(row, Refusal):
        raise invalid([refusal_error(row)])
    webhook_url = _checked_webhook(context, body.webhook_url)
    spec = catalogue[row.model]
    submission = Submission(
        application_id=caller.application_id,
        idempotency_key=idempotency_key,
        external_id=row.external_id,
        user_id=row.user_id,
        model=row.model,
        input_json=row.input_json,
        priority=row.priority,
        webhook_url=webhook_url,
        credit_type=spec.credit_type,
        price=spec.credits_per_run,
    )
    outcome = await context.db.statement(submissions.submit_generation, submission)
    if isinstance(outcome, ShortOfCredits):
        raise Problem(
            402,
            "insufficient-credits",
            "Insufficient credits",
            f"user {row.user_id!r} has {outcome.balance} {spec.credit_type} credits; {row.model} costs"
            f" {outcome.price}",
            balance=outcome.balance,
            price=outcome.price,
            credit_type=spec.credit_type,
        )
    if isinstance(outcome, Accepted):
        first = _submitted_row(submission, row, outcome)
        return _json(views.accepted(first), 201, {"Location": f"/v1/generations/{first['id']}"})
    existing = await context.db(submissions.generation_by_id, outcome.request_id)
    if existing is None:  # requests are never deleted once committed
        raise Problem(409, "conflict", "Conflict", "the request it names is gone; try again")
    _same_submission(existing, submission, row)
    existing["input"] = _sorted(existing["input"])
    headers = {"Location": f"/v1/generations/{existing['id']}", "Idempotent-Replayed": "true"}
    return _json(views.accepted(existing), 201, headers)


def _checked_webhook(context: ServiceContext, url: str | None) -> str | None:
    if url is None:
        return None
    try:
        return context.webhook_policy.check_url(url)
    except WebhookRefused as exc:
        raise invalid(
            [{"field": "webhook_url", "code": "webhook_url_refused", "message": str(exc)}]
        ) from None


def _submitted_row(submission: Submission, row: AcceptedRow, accepted: Accepted) -> dict[str, Any]:
    return {
        "id": accepted.request_id,
        "status": "pending",
        "user_id": row.user_id,
        "model": row.model,
        "input": json.loads(row.input_json),
        "external_id": row.external_id,
        "priority": row.priority,
        "batch_id": None,
        "error": None,
        "credits_charged": submission.price,
        "debited": submission.price,
        "outputs": None,
        "output_uris": None,
        "cancel_requested_at": None,
        "retry_of": None,
        "retried_as": None,
        "webhook_url": submission.webhook_url,
        "created_at": accepted.created_at,
        "started_at": None,
        "completed_at": None,
    }


def _same_submission(existing: dict[str, Any], submission: Submission, row: AcceptedRow) -> None:
    """A key (or external id) already used: the same submission is a retry, anything else is refused."""
    same = (
        existing["application_id"] == submission.application_id
        and existing["user_id"] == row.user_id
        and existing["model"] == row.model
        and canonical_json(existing["input"]) == row.input_json
        and existing["external_id"] == row.external_id
        and existing["priority"] == row.priority
        and existing["webhook_url"] == submission.webhook_url
    )
    if same:
        return
    by_key = (
        submission.idempotency_key is not None and existing["idempotency_key"] == submission.idempotency_key
    )
    if by_key and existing["application_id"] == submission.application_id:
        raise Problem(
            422,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was used for a different request",
        )
    raise Problem(
        409,
        "external-id-taken",
        "external_id already used",
        f"external_id {row.external_id!r} already names a different request",
        errors=[{"field": "external_id", "code": Reason.EXTERNAL_ID_TAKEN.value, "message": "already used"}],
    )


@router.get(
    "/v1/generations/{request_id}",
    response_model=Generation,
    responses=problem_responses(404, 422),
    summary="Read a generation",
)
async def get_generation(request_id: RequestId, caller: CallerDep, context: ContextDep) -> Response:
    """Status, error, credits charged, and outputs as `s3://` URIs with presigned URLs."""
    row = await context.db(submissions.generation, caller.application_id, request_id)
    if row is None:
        raise _not_found(request_id)
    return _json(views.generation(row, context.presign))


@router.get(
    "/v1/generations",
    response_model=GenerationList,
    responses=problem_responses(422),
    summary="List generations",
)
async def list_generations(
    caller: CallerDep,
    context: ContextDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=30, description="`next_cursor` of the page before")] = None,
) -> Response:
    """The application's own submissions, newest first (outputs without presigned URLs)."""
    before_id = None
    if after is not None:
        if not after.isdigit() or not 0 < int(after) < 2**63:
            raise invalid([{"field": "after", "code": "invalid_cursor", "message": "not a cursor"}])
        before_id = int(after)
    rows = await context.db(
        submissions.generations, caller.application_id, before_id=before_id, limit=limit + 1
    )
    page = rows[:limit]
    has_more = len(rows) > limit
    return _json(
        {
            "object": "list",
            "data": [views.generation(row) for row in page],
            "has_more": has_more,
            "next_cursor": str(page[-1]["id"]) if has_more else None,
        }
    )


@router.post(
    "/v1/generations/{request_id}/cancel",
    response_model=Generation,
    responses=problem_responses(404, 422),
    summary="Cancel a generation",
)
async def cancel_generation(request_id: RequestId, caller: CallerDep, context: ContextDep) -> Response:
    """A pending generation ends `canceled` at once; one in flight is stopped at Replicate and ends
    `canceled` shortly after. Either way its credits are refunded. A finished one stays as it is."""
    if not await context.db(submissions.visible_to, caller.application_id, request_id):
        raise _not_found(request_id)
    await context.db(cancel_requests, request_id=request_id)
    row = await context.db(submissions.generation, caller.application_id, request_id)
    assert row is not None
    return _json(views.generation(row))


def _not_found(request_id: int) -> Problem:
    return Problem(404, "not-found", "Not found", f"no generation {request_id}")
