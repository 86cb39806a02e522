"""`GET /console`: the operator console page.

The page is one self-contained HTML document. Its Content-Security-Policy allows exactly its own
inline script (by hash) and same-origin requests, so nothing can load from elsewhere; no-referrer
keeps a `?token=` in its URL from leaking through Referer headers.
"""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter, Depends, Response

from shared.settings import ServiceSettings

from .auth import header_or_query_token_dependency
from .static import PAGE, SCRIPT, STYLE


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CONSOLE_HTML = PAGE.replace("__STYLE__", STYLE).replace("__SCRIPT__", SCRIPT).encode("utf-8")
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_sha256_source(SCRIPT)}; style-src {_sha256_source(STYLE)}; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def console_router(service: ServiceSettings) -> APIRouter:
    dependencies = [Depends(header_or_query_token_dependency(service.token))] if service.token is not None else []
    router = APIRouter(dependencies=dependencies)

    # Not part of the JSON API's schema: a page for people, like the docs pages FastAPI leaves out.
    @router.get("/console", include_in_schema=False)
    def console() -> Response:
        return Response(CONSOLE_HTML, media_type="text/html; charset=utf-8", headers=_HEADERS)

    return router
