"""HTTP routes: Replicate's API under ``/v1``, output files under ``/_delivery``, token streams under
``/_stream`` and the emulator's own controls under ``/_emulator``. ``create_app`` assembles them behind
the gateway (auth, rate limits, faults; see ``gateway.py``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ai_pipeline.dev.emulator.artifacts import content_type_for
from ai_pipeline.dev.emulator.config import ConfigError, EmulatorConfig
from ai_pipeline.dev.emulator.gateway import Gateway, install_log_filter
from ai_pipeline.dev.emulator.models import (
    BUILTIN_DEPLOYMENTS,
    BUILTIN_MODELS,
    BuiltinModel,
    find_version,
    model_versions,
)
from ai_pipeline.dev.emulator.predictions import (
    CANCELED,
    DEFAULT_WEBHOOK_EVENTS,
    FAILED,
    STARTING,
    WEBHOOK_EVENTS,
    InvalidCursor,
)
from ai_pipeline.dev.emulator.problems import (
    INVALID_VERSION,
    NOT_FOUND,
    ProblemError,
    input_validation_failed,
)
from ai_pipeline.dev.emulator.service import EmulatorService

STREAM_POLL_SECONDS = 0.05


def parse_prefer_wait(header: str | None, max_wait: float) -> float | None:
    """Seconds to hold a create for ``Prefer: wait`` / ``wait=N`` (1-60); None if not asked or malformed.

    Malformed preferences are ignored, as RFC 7240 asks of servers.
    """
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value:
            return max_wait
        value = value.strip().strip('"')
        if value.isdigit() and 1 <= int(value) <= 60:
            return float(value)
        return None
    return None


class EmulatorApi:
    """The route handlers, bound to one ``EmulatorService``."""

    def __init__(self, service: EmulatorService) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        """Every route the emulator serves."""
        return [
            Route("/v1/predictions", self.create_prediction, methods=["POST"]),
            Route("/v1/predictions", self.list_predictions, methods=["GET"]),
            Route("/v1/predictions/{prediction_id}", self.get_prediction, methods=["GET"]),
            Route("/v1/predictions/{prediction_id}/cancel", self.cancel_prediction, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{owner}/{name}", self.get_model, methods=["GET"]),
            Route("/v1/models/{owner}/{name}/versions", self.list_versions, methods=["GET"]),
            Route("/v1/models/{owner}/{name}/versions/{version_id}", self.get_version, methods=["GET"]),
            Route("/v1/models/{owner}/{name}/predictions", self.create_model_prediction, methods=["POST"]),
            Route("/v1/deployments", self.list_deployments, methods=["GET"]),
            Route("/v1/deployments/{owner}/{name}", self.get_deployment, methods=["GET"]),
            Route(
                "/v1/deployments/{owner}/{name}/predictions",
                self.create_deployment_prediction,
                methods=["POST"],
            ),
            Route("/v1/webhooks/default/secret", self.webhook_secret, methods=["GET"]),
            Route("/v1/account", self.account, methods=["GET"]),
            Route("/_delivery/{prediction_id}/{filename}", self.download, methods=["GET"]),
            Route("/_stream/{prediction_id}", self.stream, methods=["GET"]),
            Route("/_emulator/health", self.health, methods=["GET"]),
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/config", self.get_config, methods=["GET"]),
            Route("/_emulator/config", self.update_config, methods=["POST"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/models", self.registry, methods=["GET"]),
        ]

    # --- predictions -----------------------------------------------------------------------------

    async def create_prediction(self, request: Request) -> Response:
        """``POST /v1/predictions``: run a model version."""
        body = await _json_object(request)
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise _root_field_required("version")
        model = find_version(version)
        if model is None:
            raise ProblemError(422, *INVALID_VERSION)
        by_name = version == model.ref  # an official model named instead of a version
        return await self._create(
            request, body, model, deployment=None, version=model.served_version if by_name else None
        )

    async def create_model_prediction(self, request: Request) -> Response:
        """``POST /v1/models/{owner}/{name}/predictions``: run an official model by name."""
        ref = f"{request.path_params['owner']}/{request.path_params['name']}"
        model = BUILTIN_MODELS.get(ref)
        if model is None or not model.official:
            raise ProblemError(404, *NOT_FOUND)
        body = await _json_object(request)
        return await self._create(request, body, model, deployment=None, version=model.served_version)

    async def create_deployment_prediction(self, request: Request) -> Response:
        """``POST /v1/deployments/{owner}/{name}/predictions``: run a deployment."""
        ref = f"{request.path_params['owner']}/{request.path_params['name']}"
        deployment = BUILTIN_DEPLOYMENTS.get(ref)
        if deployment is None:
            raise ProblemError(404, "Deployment not found", f"Deployment {ref} does not exist.")
        return await self._create(request, await _json_object(request), deployment.model, deployment=ref)

    async def _create(
        self,
        request: Request,
        body: dict[str, Any],
        model: BuiltinModel,
        deployment: str | None,
        version: str | None = None,
    ) -> Response:
        service = self.service
        if "input" not in body:
            raise _root_field_required("input")
        given_input = body["input"]
        issues = model.validate_input(given_input)
        if issues:
            raise input_validation_failed(issues)
        webhook = _optional_url(body, "webhook")
        webhook_completed = _optional_url(body, "webhook_completed")
        events = _webhook_events(body.get("webhook_events_filter"))
        base_url = service.base_url(str(request.base_url))
        prediction = service.create_prediction(
            model,
            given_input,
            base_url=base_url,
            deployment=deployment,
            version=version,
            webhook=webhook,
            webhook_events=events,
            webhook_completed=webhook_completed,
        )
        wait_seconds = parse_prefer_wait(request.headers.get("prefer"), service.config.max_wait_seconds)
        headers = {"Location": f"{base_url}/v1/predictions/{prediction.id}"}
        reported_status = None
        if wait_seconds is not None:
            headers["Preference-Applied"] = "wait"
            if not await service.wait(prediction, wait_seconds):
                # Replicate answers a sync request that ran out of time with status 'starting', which is
                # what makes the official client fall back to polling.
                reported_status = STARTING
        return JSONResponse(
            service.render(prediction, base_url, reported_status), status_code=201, headers=headers
        )

    async def get_prediction(self, request: Request) -> Response:
        """``GET /v1/predictions/{id}``."""
        prediction = self._prediction(request)
        return JSONResponse(self.service.render(prediction, self._base_url(request)))

    async def cancel_prediction(self, request: Request) -> Response:
        """``POST /v1/predictions/{id}/cancel``: 200 with the (now canceled) prediction."""
        prediction = self._prediction(request)
        self.service.cancel(prediction)
        return JSONResponse(self.service.render(prediction, self._base_url(request)))

    async def list_predictions(self, request: Request) -> Response:
        """``GET /v1/predictions``: newest first, with absolute ``next``/``previous`` page URLs."""
        base_url = self._base_url(request)
        try:
            items, next_cursor, previous_cursor = self.service.store.page(
                request.query_params.get("cursor"), self.service.config.list_page_size
            )
        except InvalidCursor as exc:
            raise ProblemError(400, "Invalid cursor", "The cursor is not valid.") from exc
        page_url = f"{base_url}/v1/predictions?cursor="
        return JSONResponse(
            {
                "next": page_url + next_cursor if next_cursor else None,
                "previous": page_url + previous_cursor if previous_cursor else None,
                "results": [self.service.render(prediction, base_url) for prediction in items],
            }
        )

    # --- models, versions, deployments, account, secret -----------------------------------------

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``: the built-in models."""
        base_url = self._base_url(request)
        models = [self._model_json(model, base_url) for model in BUILTIN_MODELS.values()]
        return JSONResponse({"next": None, "previous": None, "results": models})

    async def get_model(self, request: Request) -> Response:
        """``GET /v1/models/{owner}/{name}``."""
        return JSONResponse(self._model_json(self._model(request), self._base_url(request)))

    async def list_versions(self, request: Request) -> Response:
        """``GET /v1/models/{owner}/{name}/versions``: each built-in model has one version."""
        return JSONResponse(
            {"next": None, "previous": None, "results": [self._model(request).version_json()]}
        )

    async def get_version(self, request: Request) -> Response:
        """``GET /v1/models/{owner}/{name}/versions/{id}``."""
        model = self._model(request)
        if request.path_params["version_id"] != model.version_id:
            raise ProblemError(404, *NOT_FOUND)
        return JSONResponse(model.version_json())

    async def list_deployments(self, request: Request) -> Response:
        """``GET /v1/deployments``."""
        results = [deployment.deployment_json() for deployment in BUILTIN_DEPLOYMENTS.values()]
        return JSONResponse({"next": None, "previous": None, "results": results})

    async def get_deployment(self, request: Request) -> Response:
        """``GET /v1/deployments/{owner}/{name}``."""
        deployment = BUILTIN_DEPLOYMENTS.get(f"{request.path_params['owner']}/{request.path_params['name']}")
        if deployment is None:
            raise ProblemError(404, *NOT_FOUND)
        return JSONResponse(deployment.deployment_json())

    async def webhook_secret(self, request: Request) -> Response:
        """``GET /v1/webhooks/default/secret``."""
        return JSONResponse({"key": self.service.webhook_secret})

    async def account(self, request: Request) -> Response:
        """``GET /v1/account``."""
        return JSONResponse(
            {"type": "organization", "username": "emulator", "name": "Replicate emulator", "github_url": None}
        )

    # --- output files and streams ----------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        """``GET /_delivery/{id}/{file}``: an output file, 404 once removed."""
        filename = request.path_params["filename"]
        content = self.service.file_content(request.path_params["prediction_id"], filename)
        if content is None:
            return Response("Not Found", status_code=404, media_type="text/plain")
        self.service.stats.downloads += 1
        return Response(
            content,
            media_type=content_type_for(filename),
            headers={"cache-control": "public, max-age=3600"},
        )

    async def stream(self, request: Request) -> Response:
        """``GET /_stream/{id}``: server-sent events ``output`` (one per token), ``error``, ``done``."""
        prediction = self.service.get(request.path_params["prediction_id"])
        if prediction is None or not prediction.model.streams:
            raise ProblemError(404, *NOT_FOUND)
        service = self.service
        base_url = self._base_url(request)

        async def events() -> AsyncIterator[str]:
            sent = 0
            while True:
                now = time.time()
                output = prediction.output_at(now, base_url) or []
                for token in output[sent:]:
                    sent += 1
                    data = "\n".join(f"data: {line}" for line in str(token).split("\n"))
                    yield f"event: output\nid: {sent}\n{data}\n\n"
                if prediction.is_terminal(now):
                    status = prediction.status_at(now)
                    if status == FAILED and prediction.failure is not None:
                        yield f"event: error\nid: {sent + 1}\ndata: {prediction.failure.error}\n\n"
                    done = {"reason": "canceled"} if status == CANCELED else {}
                    yield f"event: done\nid: {sent + 2}\ndata: {json.dumps(done)}\n\n"
                    return
                delay = min(STREAM_POLL_SECONDS, prediction.next_change_after(now) - now)
                await service.wait_for_change(prediction, delay)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store"}
        )

    # --- emulator controls -----------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /_emulator/health``."""
        return JSONResponse({"status": "ok"})

    async def stats(self, request: Request) -> Response:
        """``GET /_emulator/stats[?per_input=1]``: counters (see ``Stats``)."""
        per_input = request.query_params.get("per_input", "") not in ("", "0", "false")
        return JSONResponse(self.service.stats_snapshot(per_input=per_input))

    async def get_config(self, request: Request) -> Response:
        """``GET /_emulator/config``: the live configuration."""
        return JSONResponse(self.service.config.to_dict())

    async def update_config(self, request: Request) -> Response:
        """``POST /_emulator/config``: JSON merge patch of the live configuration."""
        patch = await _json_object(request)
        try:
            config = self.service.update_config(patch)
        except ConfigError as exc:
            raise ProblemError(422, "Invalid emulator configuration", str(exc)) from exc
        return JSONResponse(config.to_dict())

    async def reset(self, request: Request) -> Response:
        """``POST /_emulator/reset[?config=1]``: forget predictions and counters (and config changes)."""
        restore = request.query_params.get("config", "") not in ("", "0", "false")
        await self.service.reset(restore_config=restore)
        return JSONResponse({"reset": True, "config_restored": restore})

    async def registry(self, request: Request) -> Response:
        """``GET /_emulator/models``: built-in models and deployments."""
        deployments = [{"deployment": ref, "model": d.model.ref} for ref, d in BUILTIN_DEPLOYMENTS.items()]
        return JSONResponse({"models": model_versions(), "deployments": deployments})

    # --- helpers ---------------------------------------------------------------------------------

    def _base_url(self, request: Request) -> str:
        return self.service.base_url(str(request.base_url))

    def _prediction(self, request: Request) -> Any:
        prediction = self.service.get(request.path_params["prediction_id"])
        if prediction is None:
            raise ProblemError(404, *NOT_FOUND)
        return prediction

    def _model(self, request: Request) -> BuiltinModel:
        model = BUILTIN_MODELS.get(f"{request.path_params['owner']}/{request.path_params['name']}")
        if model is None:
            raise ProblemError(404, *NOT_FOUND)
        return model

    def _model_json(self, model: BuiltinModel, base_url: str) -> dict[str, Any]:
        return model.model_json(base_url, self.service.stats.creates_by_model.get(model.ref, 0))


def create_app(config: EmulatorConfig | None = None, service: EmulatorService | None = None) -> Gateway:
    """The emulator as an ASGI application (give ``config``, or a ready ``service`` to share state)."""
    service = service or EmulatorService(config)
    install_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.aclose()

    starlette_app = Starlette(
        routes=EmulatorApi(service).routes(),
        lifespan=lifespan,
        exception_handlers={
            ProblemError: _problem_handler,
            HTTPException: _http_exception_handler,
        },
    )
    starlette_app.state.service = service
    return Gateway(starlette_app, service)


async def _problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return exc.response()


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = "Not found" if exc.status_code == 404 else str(exc.detail)
    detail = NOT_FOUND[1] if exc.status_code == 404 else str(exc.detail)
    return ProblemError(exc.status_code, title, detail).response()


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProblemError(400, "Bad request", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise ProblemError(422, "Input validation failed", "- (root): Invalid type. Expected: object\n")
    return body


def _root_field_required(name: str) -> ProblemError:
    return ProblemError(
        422,
        "Input validation failed",
        f"- (root): {name} is required\n",
        invalid_fields=[{"type": "required", "field": "(root)", "description": f"{name} is required"}],
    )


def _optional_url(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc:
            return value
    raise ProblemError(
        422,
        "Input validation failed",
        f"- {key}: Does not match format 'uri'\n",
        invalid_fields=[{"type": "format", "field": key, "description": "Does not match format 'uri'"}],
    )


def _webhook_events(value: Any) -> frozenset[str]:
    if value is None:
        return DEFAULT_WEBHOOK_EVENTS
    if not isinstance(value, list) or any(event not in WEBHOOK_EVENTS for event in value):
        allowed = ", ".join(f'"{event}"' for event in sorted(WEBHOOK_EVENTS))
        raise ProblemError(
            422,
            "Input validation failed",
            f"- webhook_events_filter.0: webhook_events_filter.0 must be one of the following: {allowed}\n",
        )
    return frozenset(value)
