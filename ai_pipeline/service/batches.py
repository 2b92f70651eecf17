"""`/v1/batches`: upload a batch (a file or a JSON list, loaded by the loader with its per-row report),
read it (status, counts per state, credits, cost, times), stream its results and errors as JSONL,
cancel it, list them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ai_pipeline.db import api_batches
from ai_pipeline.db.batches import BATCH_NAME
from ai_pipeline.db.summaries import batch_summaries
from ai_pipeline.loading import LoadError, load_file
from ai_pipeline.loading.summary import LoadSummary
from ai_pipeline.service import uploads, views
from ai_pipeline.service.auth import CallerDep, ContextDep
from ai_pipeline.service.context import ServiceContext
from ai_pipeline.service.generations import IdempotencyKey
from ai_pipeline.service.problems import Problem, invalid
from ai_pipeline.service.schemas import Batch, BatchCreate, BatchList, problem_responses
from ai_pipeline.service.webhooks import WebhookRefused

router = APIRouter(tags=["batches"])

BATCHES_PATH = "/v1/batches"
BatchId = Annotated[str, PathParam(pattern=f"^{BATCH_NAME}$", description="The batch's id")]
JSONL = "application/x-ndjson"

_UPLOAD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "a .csv, .jsonl or .parquet file",
                    },
                    "webhook_url": {"type": "string"},
                },
            }
        },
        **{media: {"schema": {"type": "string", "format": "binary"}} for media in uploads.RAW_TYPES},
    },
}


async def _batch_object(
    context: ServiceContext, batch_id: str, application_id: str | None
) -> dict[str, Any] | None:
    record = await context.db(api_batches.batch, batch_id, application_id)
    if record is None:
        return None
    summaries = await context.db(batch_summaries, batch_id)
    return views.batch(record, summaries[0] if summaries else None)


def _not_found(batch_id: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"no batch {batch_id!r}")


@router.post(
    BATCHES_PATH,
    status_code=201,
    response_model=Batch,
    responses=problem_responses(400, 413, 415, 422),
    openapi_extra={"requestBody": _UPLOAD_BODY},
    summary="Upload a batch",
)
async def create_batch(
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    idempotency_key: IdempotencyKey = None,
    webhook_url: Annotated[str | None, Query(max_length=2000, description="For file uploads")] = None,
) -> Response:
    """A CSV, JSONL or Parquet file (the request body with its media type, or the `file` field of a
    multipart form) or a JSON list, loaded as a new batch: every row checked by the loader's rules,
    refused rows listed in the batch's errors file. The batch's webhook gets `batch.completed` when its
    last request ends. A retry with the same `Idempotency-Key` returns the first answer."""
    with uploads.scratch_folder() as scratch:
        upload = await uploads.receive(request, Path(scratch), webhook_url)
        webhook = None
        if upload.webhook_url is not None:
            try:
                webhook = context.webhook_policy.check_url(upload.webhook_url)
            except WebhookRefused as exc:
                raise invalid(
                    [{"field": "webhook_url", "code": "webhook_url_refused", "message": str(exc)}]
                ) from None
        fingerprint = hashlib.sha256(f"{upload.sha256}|{webhook}".encode()).hexdigest()
        batch_id = uploads.new_batch_id()
        app = caller.application_id
        if idempotency_key is not None:
            prior = await context.db(api_batches.claim_batch_key, app, idempotency_key, fingerprint, batch_id)
            if prior is not None:
                if prior.fingerprint != fingerprint:
                    raise Problem(
                        422, "idempotency-key-reused", "Idempotency-Key reused",
                        "this Idempotency-Key was used for a different upload",
                    )  # fmt: skip
                if prior.response is not None and prior.status_code is not None:
                    return JSONResponse(
                        prior.response, prior.status_code, headers={"Idempotent-Replayed": "true"}
                    )
                batch_id = prior.batch_id  # its first upload did not finish: load it again (nothing twice)
        await context.db(api_batches.create_batch, batch_id, app, webhook)
        rejects = Path(scratch) / "rejects.csv"
        try:
            summary: LoadSummary = await run_in_threadpool(
                load_file, context.engine, upload.path, batch_id, rejects_path=rejects, progress=False
            )
        except LoadError as exc:
            await context.db(api_batches.drop_empty_batch, batch_id)
            if idempotency_key is not None:
                await context.db(api_batches.forget_batch_key, app, idempotency_key)
            raise invalid([{"field": "file", "code": "invalid_file", "message": str(exc)}]) from None
        await context.db(api_batches.record_refusals, batch_id, list(uploads.refused_rows(rejects)))
    await context.db(api_batches.complete_if_done, batch_id)
    body = await _batch_object(context, batch_id, app)
    assert body is not None
    body["upload"].update(
        rows_read=summary.rows_read,
        rows_already_present=summary.rows_already_present,
        refused_by_reason=summary.refused_by_reason,
        warnings=list(summary.warnings),
    )
    if idempotency_key is not None:
        kept = await context.db(api_batches.record_batch_answer, app, idempotency_key, 201, body)
        if kept.response is not None:
            body = kept.response
    return JSONResponse(body, 201, headers={"Location": f"{BATCHES_PATH}/{batch_id}"})


@router.get(
    f"{BATCHES_PATH}/{{batch_id}}",
    response_model=Batch,
    responses=problem_responses(404, 422),
    summary="Read a batch",
)
async def get_batch(batch_id: BatchId, caller: CallerDep, context: ContextDep) -> Response:
    """Status, request counts per state, credits, cost, timestamps, and links to the results and errors."""
    body = await _batch_object(context, batch_id, caller.application_id)
    if body is None:
        raise _not_found(batch_id)
    return JSONResponse(body)


@router.get(BATCHES_PATH, response_model=BatchList, responses=problem_responses(422), summary="List batches")
async def list_batches(
    caller: CallerDep,
    context: ContextDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=100, description="`next_cursor` of the page before")
    ] = None,
) -> Response:
    """The application's batches, newest first."""
    ids = await context.db(api_batches.batch_ids, caller.application_id, after=after, limit=limit + 1)
    page = ids[:limit]
    data = [
        body for batch_id in page if (body := await _batch_object(context, batch_id, caller.application_id))
    ]
    has_more = len(ids) > limit
    return JSONResponse(
        {"object": "list", "data": data, "has_more": has_more, "next_cursor": page[-1] if has_more else None}
    )


def _jsonl(lines: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for line in lines:
        yield (json.dumps(line, default=str, ensure_ascii=False) + "\n").encode()


_JSONL_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "JSON lines", "content": {JSONL: {"schema": {"type": "string"}}}}
}


@router.get(
    f"{BATCHES_PATH}/{{batch_id}}/results",
    response_class=StreamingResponse,
    responses={**_JSONL_RESPONSE, **problem_responses(404, 422)},
    summary="Stream a batch's results",
)
async def batch_results(batch_id: BatchId, caller: CallerDep, context: ContextDep) -> Response:
    """One JSON line per request of the batch, in id order: row, custom_id, status, outputs, error."""
    if await context.db(api_batches.batch, batch_id, caller.application_id) is None:
        raise _not_found(batch_id)
    rows = api_batches.stream_results(context.engine, batch_id)
    return StreamingResponse(_jsonl(views.result_line(row) for row in rows), media_type=JSONL)


@router.get(
    f"{BATCHES_PATH}/{{batch_id}}/errors",
    response_class=StreamingResponse,
    responses={**_JSONL_RESPONSE, **problem_responses(404, 422)},
    summary="Stream a batch's errors",
)
async def batch_errors(batch_id: BatchId, caller: CallerDep, context: ContextDep) -> Response:
    """One JSON line per row the upload refused (row, reason code, message), then per request that
    failed, was rejected or canceled."""
    if await context.db(api_batches.batch, batch_id, caller.application_id) is None:
        raise _not_found(batch_id)
    rows = api_batches.stream_errors(context.engine, batch_id)
    return StreamingResponse(_jsonl(views.error_line(row) for row in rows), media_type=JSONL)


@router.post(
    f"{BATCHES_PATH}/{{batch_id}}/cancel",
    response_model=Batch,
    responses=problem_responses(404, 422),
    summary="Cancel a batch",
)
async def cancel_batch(batch_id: BatchId, caller: CallerDep, context: ContextDep) -> Response:
    """Pending requests end `canceled` at once, requests in flight are stopped at Replicate and end
    `canceled`; every debited one is refunded. Finished requests stay as they are."""
    if await context.db(api_batches.batch, batch_id, caller.application_id) is None:
        raise _not_found(batch_id)
    await context.db(api_batches.cancel_batch, batch_id)
    body = await _batch_object(context, batch_id, caller.application_id)
    assert body is not None
    return JSONResponse(body)


__all__ = ["BATCHES_PATH", "BatchCreate", "router"]
