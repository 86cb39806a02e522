"""Preview routes: the newest input or output frame of a stream, as one JPEG or as an MJPEG stream.

Frames come from `PreviewControl.latest_frame` (the stream's shared-memory rings). The MJPEG
stream polls at `fps` and sends a frame only when it changed; it ends when the client goes away
or the stream is removed. Viewers are capped (`MAX_MJPEG_VIEWERS`): every viewer costs the
supervisor one ring read per tick.
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from shared.settings import STREAM_NAME_RE, ServiceSettings

from ..control import PREVIEW_SIDES, ControlUnavailable, PreviewControl, UnknownStream
from ..errors import ApiError, ErrorBody, ValidationErrorBody
from .auth import header_or_query_token_dependency

JPEG_QUALITY = 85
BOUNDARY = "stylecastframe"
MAX_MJPEG_VIEWERS = 16
_NO_STORE = {"Cache-Control": "no-store"}


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an H×W×3 uint8 RGB frame."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} frame as JPEG")
    return buffer.tobytes()


def _checked(name: str, side: str) -> None:
    # Names and sides that cannot exist are 404 without asking the supervisor.
    if not STREAM_NAME_RE.fullmatch(name):
        raise UnknownStream(name)
    if side not in PREVIEW_SIDES:
        raise ApiError(404, "not_found", f"no preview side {side[:20]!r}: use input or output")


def _no_frame(name: str, side: str) -> ApiError:
    return ApiError(503, "no_frame", f"stream {name!r} has no {side} frame yet; try again shortly", {"Retry-After": "1"})


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


def preview_router(control: PreviewControl, service: ServiceSettings) -> APIRouter:
    dependencies = [Depends(header_or_query_token_dependency(service.token))] if service.token is not None else []
    responses = {
        404: _error("No stream has this name, or the side is not input or output."),
        500: _error("Internal fault of the service; the body carries a request id to find in the log."),
        503: _error("No frame yet (`no_frame`, with Retry-After), or the supervisor cannot look now."),
        **({401: _error("Missing or wrong token (header or ?token=; only when service.token is set).")} if service.token else {}),
    }
    router = APIRouter(prefix="/streams", tags=["preview"], dependencies=dependencies, responses=responses)
    viewers = {"mjpeg": 0}  # the event loop is single-threaded: a plain counter is enough

    @router.get(
        "/{name}/preview/{side}.jpg",
        response_class=Response,
        summary="Newest frame of a stream",
        responses={200: {"description": "JPEG of the newest frame of the side (input: as ingested, S×S; output: stylised).",
                         "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def preview_frame(name: str, side: str) -> Response:
        """The newest input or output frame as one JPEG (`side` is `input` or `output`)."""
        _checked(name, side)
        frame = await run_in_threadpool(control.latest_frame, name, side)
        if frame is None:
            raise _no_frame(name, side)
        return Response(await run_in_threadpool(encode_jpeg, frame), media_type="image/jpeg", headers=_NO_STORE)

    @router.get(
        "/{name}/preview/{side}.mjpg",
        response_class=StreamingResponse,
        summary="Live MJPEG preview of a stream",
        responses={
            200: {"description": f"multipart/x-mixed-replace; boundary={BOUNDARY}: one JPEG part per new frame.",
                  "content": {"multipart/x-mixed-replace": {"schema": {"type": "string", "format": "binary"}}}},
            422: {"model": ValidationErrorBody, "description": "`fps` is not a number in (0, 30]."},
        },
    )
    async def preview_stream(
        request: Request, name: str, side: str,
        fps: float = Query(10.0, gt=0, le=30, description="Polls per second (a frame is sent only when it changed)."),
    ) -> StreamingResponse:
        """A live MJPEG stream of the input or output side, for an <img> tag or a video player."""
        _checked(name, side)
        first = await run_in_threadpool(control.latest_frame, name, side)  # 404 here, before the stream starts
        if viewers["mjpeg"] >= MAX_MJPEG_VIEWERS:
            raise ApiError(503, "too_many_viewers", f"the preview already has its maximum of {MAX_MJPEG_VIEWERS} viewers")
        return StreamingResponse(
            _mjpeg_parts(request, control, name, side, 1.0 / fps, first, viewers),
            media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}", headers=_NO_STORE,
        )

    return router


async def _mjpeg_parts(request: Request, control: PreviewControl, name: str, side: str, period_s: float,
                       frame: np.ndarray | None, viewers: dict):
    last: np.ndarray | None = None
    viewers["mjpeg"] += 1  # counted here, not in the route: a response never started never runs `finally`
    try:
        while True:
            if frame is not None and (last is None or frame.shape != last.shape or not np.array_equal(frame, last)):
                last = frame
                jpeg = await run_in_threadpool(encode_jpeg, frame)
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"
            await asyncio.sleep(period_s)
            if await request.is_disconnected():
                return
            try:
                frame = await run_in_threadpool(control.latest_frame, name, side)
            except UnknownStream:
                return  # the stream was removed: the response ends
            except ControlUnavailable:
                frame = None  # the supervisor is busy: keep the last picture, ask again next tick
    finally:
        viewers["mjpeg"] -= 1
