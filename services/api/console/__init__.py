"""The operator console (`GET /console`) and the frame preview routes it shows.

    GET /console                                 the console page (HTML + JS, no CDN, no build step)
    GET /streams/{name}/preview/{side}.jpg       the newest input|output frame as one JPEG
    GET /streams/{name}/preview/{side}.mjpg      multipart/x-mixed-replace JPEG stream of that side

With `service.token` set, these routes take the token as `Authorization: Bearer <token>` or as a
`?token=` query parameter: a browser cannot add a header to a page navigation or an <img> source.
"""

from .page import console_router
from .preview import preview_router

__all__ = ["console_router", "preview_router"]
