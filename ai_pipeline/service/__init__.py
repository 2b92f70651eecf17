"""The HTTP front door (`ai-pipeline serve`): API keys, idempotent submissions, batch uploads, results,
and signed webhooks out, in front of the same tables and rules as the rest of the pipeline.

    app.py         assembles the FastAPI app from one `Settings` (and runs it under uvicorn)
    context.py     what the routes share: the database, the catalogue, presigned URLs
    keys.py        API keys: made, hashed, checked            auth.py    the key on every request
    limits.py      body size limits, the per-key rate limit   problems.py  RFC 9457 errors
    schemas.py     the request and response shapes (the OpenAPI document)
    views.py       rows as API objects                        generations.py, batches.py  the routes
    uploads.py     a batch file or JSON list, streamed to a file and loaded by the loader
    webhooks.py    the delivery worker: outbox → signed POSTs, retried with backoff

No Dagster here (`make lint` holds it to that); all SQL is in `ai_pipeline/db/`. See README "HTTP API".
"""
