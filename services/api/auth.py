"""Bearer-token check for the control routes.

With `service.token` set, every /streams route needs `Authorization: Bearer <token>`; /healthz,
/readyz, /metrics and /openapi.json stay open, because probes and Prometheus scrapers rarely carry
credentials and these routes neither change anything nor show sources or prompts. Without a token
the control routes are open too, which the settings allow only on a loopback address (or with
`allow_remote_without_token`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from .errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stylecast"'}

# auto_error=False: a missing or malformed header reaches our check, which answers 401 in our shape.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="The value of service.token, sent as 'Authorization: Bearer <token>'. Needed by every /streams route when a token is configured.",
)


def _digest(text: str) -> bytes:
    # Hashing first makes the comparison's time independent of the submitted token's length too.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def token_matches(submitted: str, expected: SecretStr) -> bool:
    """Constant-time comparison of a submitted token with the configured one."""
    return hmac.compare_digest(_digest(submitted), _digest(expected.get_secret_value()))


def bearer_token_dependency(expected: SecretStr) -> Callable[..., None]:
    """A FastAPI dependency that refuses (401) a request without the right bearer token."""

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer_scheme)) -> None:
        if credentials is None:
            raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <service.token>'", _CHALLENGE)
        if not token_matches(credentials.credentials, expected):
            raise ApiError(401, "unauthorized", "wrong bearer token", _CHALLENGE)

    return require_token
