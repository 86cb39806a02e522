"""Error bodies of the API and the mapping from exceptions to HTTP answers.

Every error answer has the same JSON shape, `ErrorBody` (422 adds `problems`, one line per bad
field). Expected refusals map to 4xx/503; anything else is an internal fault: it is logged with a
request id and credentials redacted, and answered 500 with only that id — never the exception text,
which may quote a URL or a path.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.settings import redact_url

from .control import ControlError, ControlUnavailable, StreamExists, StreamRejected, UnknownStream

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(
        description="Machine-readable code: unknown_stream, stream_exists, stream_rejected, unauthorized, "
        "invalid_request, payload_too_large, unsupported_media_type, not_found, method_not_allowed, "
        "control_unavailable, internal_error."
    )
    detail: str = Field(description="One readable line saying what is wrong. Never contains credentials.")


class ValidationErrorBody(ErrorBody):
    """422: the request body is not valid; `problems` has one line per problem, naming the field."""

    problems: list[str] = Field(description="One line per problem, e.g. 'streams.prompt: must not be empty'.")


class ApiError(Exception):
    """A refusal raised by the API layer itself (bad body, bad token, ...)."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = redact_url(detail)
        self.headers = headers


class InvalidRequest(ApiError):
    """422 with one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = [redact_url(p) for p in problems]
        super().__init__(422, "invalid_request", "; ".join(self.problems))


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"error": error, "detail": redact_url(detail), **extra}
    return JSONResponse(body, status_code=status, headers=headers)


# status code and error code of each control-plane refusal
_CONTROL_ERRORS: dict[type[ControlError], tuple[int, str]] = {
    UnknownStream: (404, "unknown_stream"),
    StreamExists: (409, "stream_exists"),
    StreamRejected: (400, "stream_rejected"),
    ControlUnavailable: (503, "control_unavailable"),
}

_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _on_control_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ControlError)
    for cls in type(exc).__mro__:
        if cls in _CONTROL_ERRORS:
            status, code = _CONTROL_ERRORS[cls]
            return error_response(status, code, exc.message)
    # A ControlError subclass the API does not know is still a refusal, not a crash.
    return error_response(400, "stream_rejected", exc.message)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    extra = {"problems": exc.problems} if isinstance(exc, InvalidRequest) else {}
    return error_response(exc.status, exc.error, exc.detail, exc.headers, **extra)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    detail = exc.detail if isinstance(exc.detail, str) else "request refused"
    return error_response(exc.status_code, code, detail, dict(exc.headers) if exc.headers else None)


async def _on_request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    # The routes read their bodies themselves, so FastAPI's own validation should never fire; if a
    # future route relies on it, answer in the same shape instead of FastAPI's.
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{loc}: {str(err.get('msg', 'invalid'))[:200]}")
    return error_response(422, "invalid_request", "; ".join(problems), problems=problems)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every expected refusal in the `ErrorBody` shape, and every internal fault with a clean 500."""
    app.add_exception_handler(ControlError, _on_control_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_request_validation_error)
    app.add_middleware(InternalErrorMiddleware)


class InternalErrorMiddleware:
    """Turn an unexpected exception into a 500 `ErrorBody` and a redacted log record.

    Done here rather than with an `Exception` handler because Starlette re-raises after such a
    handler, and the server would then log the raw traceback, credentials and all.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = uuid.uuid4().hex[:12]
            trace = redact_url("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            log.error(
                "internal error %s in %s %s:\n%s",
                request_id, scope.get("method"), redact_url(scope.get("path", "")), trace,
            )
            if started:
                return  # the answer is half sent: nothing sane to add; the server closes the connection
            response = error_response(
                500, "internal_error", f"internal error (request id {request_id}); the service log has the details"
            )
            await response(scope, receive, send)
