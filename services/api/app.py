"""The HTTP control plane: `create_app(control, service)` builds the FastAPI application.

Routes (JSON unless said otherwise; every error body is `ErrorBody`, 422 adds `problems`):

    GET    /healthz                 200 HealthInfo (answered while the supervisor process lives)
    GET    /readyz                  200 ReadyInfo when the GPU worker has its models loaded, else 503 ReadyInfo
    GET    /metrics                 200 Prometheus text of every process of the node
    GET    /streams                 200 [StreamInfo]
    POST   /streams                 201 StreamInfo (+ Location); 400 rejected, 409 exists, 413, 415, 422
    GET    /streams/{name}          200 StreamInfo; 404
    DELETE /streams/{name}          204; 404
    PUT    /streams/{name}/prompt   200 StreamInfo with the new prompt_version; 400, 404, 413, 415, 422
    GET    /streams/{name}/preview/{side}.jpg|.mjpg   newest input|output frame (only for a PreviewControl)
    GET    /console                 the operator console page (HTML; not in the schema)
    GET    /openapi.json            the OpenAPI 3.1 description of all of the above

Authentication: with `service.token` set, every /streams route answers 401 without
`Authorization: Bearer <token>`; the probes, /metrics and /openapi.json stay open (see `auth`).
The preview routes and /console also take the token as `?token=` (see `console.auth`).
Any route may answer 503 `control_unavailable` when the supervisor cannot act now, and 500
`internal_error` (with a request id, nothing else) for a fault of the service itself.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool

from shared.metrics import CONTENT_TYPE, render_metrics
from shared.settings import STREAM_NAME_RE, ServiceSettings, StreamSettings

from .auth import bearer_token_dependency
from .bodies import PromptUpdate, read_json_object, validate_prompt, validate_stream
from .console import console_router, preview_router
from .control import ControlPlane, HealthInfo, PreviewControl, ReadyInfo, StreamInfo, UnknownStream
from .errors import ErrorBody, ValidationErrorBody, install_error_handlers

API_TITLE = "StyleCast control API"


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_INTERNAL = {500: _error("Internal fault of the service; the body carries a request id to find in the log.")}
_UNAVAILABLE = {503: _error("The supervisor cannot act now (starting, stopping, or a process did not answer in time).")}
_UNAUTHORIZED = {401: _error("Missing or wrong bearer token (only when service.token is set).")}
_UNKNOWN = {404: _error("No stream has this name.")}
_BODY_ERRORS = {
    413: _error("The body is larger than 64 KiB."),
    415: _error("The body is not JSON."),
    422: {"model": ValidationErrorBody, "description": "The body is invalid; `problems` has one line per field."},
}


def _package_version() -> str:
    try:
        return importlib.metadata.version("stylecast")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown (stylecast is not installed as a package)"


def _checked_name(name: str) -> str:
    # A name that is not a valid stream name cannot exist; the control plane never sees it.
    if not STREAM_NAME_RE.fullmatch(name):
        raise UnknownStream(name)
    return name


def create_app(control: ControlPlane, service: ServiceSettings) -> FastAPI:
    """The control API over `control`, protected by `service.token` when it is set."""
    if not isinstance(control, ControlPlane):
        raise TypeError(f"create_app needs a ControlPlane implementation, got {type(control).__name__}")
    if not isinstance(service, ServiceSettings):
        raise TypeError(f"create_app needs ServiceSettings, got {type(service).__name__}")
    token_required = service.token is not None

    # Swagger UI and ReDoc load scripts from a CDN, which a service on a closed network cannot
    # reach: only the schema is served.
    app = FastAPI(
        title=API_TITLE,
        version=_package_version(),
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId = the handler's name
    )
    install_error_handlers(app)
    app.include_router(_operations_router(control))
    app.include_router(_streams_router(control, service))
    if isinstance(control, PreviewControl):  # frames to show: the preview routes exist only then
        app.include_router(preview_router(control, service))
    app.include_router(console_router(service))
    app.openapi = lambda: _openapi_schema(app, token_required)  # type: ignore[method-assign]
    return app


# --------------------------------------------------------------------------------------------------
# Probes and metrics (never behind the token)
# --------------------------------------------------------------------------------------------------


def _operations_router(control: ControlPlane) -> APIRouter:
    router = APIRouter(tags=["operations"], responses=_INTERNAL)

    @router.get(
        "/healthz", response_model=HealthInfo, summary="Liveness of every process",
        response_description="The supervisor is alive; the state of every process.", responses=_UNAVAILABLE,
    )
    def healthz() -> HealthInfo:
        """200 whenever the supervisor (which serves this API) is alive; the body tells each process's state."""
        return control.health()

    @router.get(
        "/readyz",
        response_model=ReadyInfo,
        summary="Readiness to stylise",
        response_description="Ready: the GPU worker has its models loaded.",
        responses={503: {"model": ReadyInfo, "description": "Not ready yet (or any more); `reason` says why."}},
    )
    def readyz(response: Response) -> ReadyInfo:
        """200 once the GPU worker reports its models loaded, 503 before (and when it is lost)."""
        info = control.ready()
        response.status_code = 200 if info.ready else 503
        return info

    @router.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics of every process of the node",
        responses={200: {"description": "Prometheus text exposition format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        """One scrape endpoint for the node: the samples of every StyleCast process, merged."""
        return Response(render_metrics(), media_type=CONTENT_TYPE)

    return router


# --------------------------------------------------------------------------------------------------
# Streams (behind the token when one is set)
# --------------------------------------------------------------------------------------------------

_STREAM_BODY = {
    "requestBody": {
        "required": True,
        "description": "One stream, with the fields of a `streams` entry of the config file.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/StreamSettings"}}},
    }
}
_PROMPT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PromptUpdate"}}},
    }
}


def _streams_router(control: ControlPlane, service: ServiceSettings) -> APIRouter:
    dependencies = [Depends(bearer_token_dependency(service.token))] if service.token is not None else []
    common = {**_INTERNAL, **_UNAVAILABLE, **(_UNAUTHORIZED if service.token is not None else {})}
    router = APIRouter(prefix="/streams", tags=["streams"], dependencies=dependencies, responses=common)

    @router.get("", response_model=list[StreamInfo], summary="List streams", response_description="Every stream.")
    def list_streams() -> list[StreamInfo]:
        """Every stream, in the order they were added. Sources are shown without credentials."""
        return control.list_streams()

    @router.post(
        "",
        status_code=201,
        response_model=StreamInfo,
        summary="Add a stream",
        response_description="Accepted; `Location` names the new stream's URL.",
        openapi_extra=_STREAM_BODY,
        responses={
            400: _error("The source or a sink cannot be used (e.g. unreachable, not a video)."),
            409: _error("A stream with this name exists."),
            **_BODY_ERRORS,
        },
    )
    async def add_stream(request: Request, response: Response) -> StreamInfo:
        """Start a stream. The answer comes once the supervisor has accepted it (usually in state
        'starting'); follow its state with GET /streams/{name}."""
        data = await read_json_object(request)
        # parse_stream looks at the file system (source exists, sink directory): off the event loop.
        stream: StreamSettings = await run_in_threadpool(validate_stream, data)
        info = await run_in_threadpool(control.add_stream, stream)
        response.headers["Location"] = f"/streams/{stream.name}"
        return info

    @router.get("/{name}", response_model=StreamInfo, summary="Show a stream", response_description="The stream.", responses=_UNKNOWN)
    def get_stream(name: str) -> StreamInfo:
        """State, prompt, sinks, counters, fps and latency of one stream."""
        return control.get_stream(_checked_name(name))

    @router.delete(
        "/{name}", status_code=204, response_class=Response, summary="Remove a stream",
        response_description="Removed (drained).", responses=_UNKNOWN,
    )
    def remove_stream(name: str) -> Response:
        """Stop the stream, draining it: accepted frames are written or counted as dropped, output files finalised."""
        control.remove_stream(_checked_name(name))
        return Response(status_code=204)

    @router.put(
        "/{name}/prompt",
        response_model=StreamInfo,
        summary="Change a stream's prompt",
        response_description="The stream with its new prompt and prompt_version.",
        openapi_extra=_PROMPT_BODY,
        responses={**_UNKNOWN, 400: _error("The prompt cannot be used."), **_BODY_ERRORS},
    )
    async def set_prompt(name: str, request: Request) -> StreamInfo:
        """Applied from the next batch on; the answer shows the stream with its new `prompt_version`."""
        name = _checked_name(name)
        prompt = validate_prompt(await read_json_object(request))
        return await run_in_threadpool(control.set_prompt, name, prompt)

    return router


# --------------------------------------------------------------------------------------------------
# OpenAPI
# --------------------------------------------------------------------------------------------------


def _openapi_schema(app: FastAPI, token_required: bool) -> dict[str, Any]:
    """FastAPI's schema, plus the request bodies the routes read themselves, minus FastAPI's
    default 422 on routes that cannot answer it (their only parameter is a free-form path segment)."""
    if app.openapi_schema:
        return app.openapi_schema
    auth = "Every /streams route needs `Authorization: Bearer <token>`." if token_required else "No token is configured: every route is open."
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description="Streams, prompts, health, readiness and Prometheus metrics of a StyleCast node. "
        f"/healthz, /readyz, /metrics and /openapi.json never need a token. {auth}",
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (StreamSettings, PromptUpdate):
        body_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body_schema.pop("$defs", {}))
        components[model.__name__] = body_schema
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            if answer and "#/components/schemas/HTTPValidationError" in _schema_refs(answer):
                del operation["responses"]["422"]
    used = _schema_refs(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 models, now unreferenced
        if f"#/components/schemas/{name}" not in used:
            components.pop(name, None)
    app.openapi_schema = schema
    return schema


def _schema_refs(node: Any) -> set[str]:
    """Every `$ref` string inside a JSON-like value."""
    if isinstance(node, dict):
        refs = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return refs.union(*(_schema_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_schema_refs(value) for value in node))
    return set()
