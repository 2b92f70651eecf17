"""The service assembled: `build_app(settings)` is the FastAPI app (routes, limits, problem details, the
webhook worker in the background); `serve` runs it under uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from ai_pipeline.service import batches, generations
from ai_pipeline.service.context import ServiceContext
from ai_pipeline.service.limits import BodyLimit
from ai_pipeline.service.problems import install_problem_handlers
from ai_pipeline.service.schemas import BatchCreate
from ai_pipeline.service.webhooks import WebhookWorker, running_worker
from ai_pipeline.settings import Settings

TITLE = "ai_pipeline API"
DESCRIPTION = (
    "Submit paid AI generations and batches, read their results, get signed webhooks when they end."
    " Every endpoint needs `Authorization: Bearer <key>`; errors are RFC 9457 problem details."
)


def build_app(settings: Settings, *, engine: Engine | None = None, deliver_webhooks: bool = True) -> FastAPI:
    """The API for `settings`; with `deliver_webhooks`, the webhook worker runs alongside it."""
    context = ServiceContext(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if deliver_webhooks:
                worker = WebhookWorker(
                    context.db, context.webhook_policy, poll_seconds=settings.webhook_poll_seconds
                )
                async with running_worker(worker):
                    yield
            else:
                yield
        finally:
            context.close()

    app = FastAPI(
        title=TITLE, description=DESCRIPTION, version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None
    )
    app.state.context = context
    install_problem_handlers(app)
    app.include_router(generations.router)
    app.include_router(batches.router)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.api_max_body_bytes,
        max_upload_bytes=settings.api_max_upload_bytes,
        upload_paths=(batches.BATCHES_PATH,),
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            # Referenced by the upload's hand-written request body, so FastAPI does not collect it itself.
            schema["components"]["schemas"]["BatchCreate"] = BatchCreate.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Run the API until interrupted (127.0.0.1 unless told otherwise)."""
    uvicorn.run(
        build_app(settings),
        host=host or settings.api_host,
        port=settings.api_port if port is None else port,
        # One line per request costs CPU at a thousand requests a second; errors are still logged.
        access_log=False,
        server_header=False,
        log_level="info",
    )
