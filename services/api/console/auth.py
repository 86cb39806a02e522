"""Token check for the console and preview routes: a bearer header, or `?token=` for what a browser
loads without headers (the console page itself, an <img> or a video player pointed at the MJPEG URL).

A token in a URL can end up in browser history and in proxy access logs (StyleCast's own server
keeps no access log): prefer the header wherever the client can send one.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import SecretStr

from ..auth import _CHALLENGE, _bearer_scheme, token_matches
from ..errors import ApiError

TOKEN_QUERY = "token"


def header_or_query_token_dependency(expected: SecretStr) -> Callable[..., None]:
    """A FastAPI dependency that answers 401 unless the bearer header or `?token=` holds the token."""

    def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer_scheme),
        token: str | None = Query(
            None, alias=TOKEN_QUERY, description="The service token, for clients that cannot send a header (<img>, players)."
        ),
    ) -> None:
        submitted = credentials.credentials if credentials is not None else token
        if submitted is None:
            raise ApiError(
                401, "unauthorized",
                f"missing token: send 'Authorization: Bearer <service.token>' or add ?{TOKEN_QUERY}=<service.token>", _CHALLENGE,
            )
        if not token_matches(submitted, expected):
            raise ApiError(401, "unauthorized", "wrong token", _CHALLENGE)

    return require_token
