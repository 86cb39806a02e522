"""Keep credentials out of messages: `redact_url` for URLs we hold, `scrub` for foreign text.

DESIGN §7: credentials in source URLs never appear in logs, metrics, API responses or errors.
FFmpeg and PyAV echo the URL they were given (PyAV puts it in the exception text and in
`.filename`), so any text that did not come from us goes through `scrub` before we use it.
"""

from __future__ import annotations

import re

# scheme://<anything up to the LAST '@' of the unquoted, whitespace-free token>@ → scheme://***@.
# Greedy on purpose: an unescaped '/' or '@' inside a password must not leak its tail.
_AUTHORITY_WITH_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s'\"]*)@")
# Query parameters that commonly carry secrets in camera URLs (…?user=admin&password=123).
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&;](?:user|username|password|passwd|pwd|pass|token|access_token|api_key|apikey|auth|key|secret"
    r"|signature|sig)=)[^&;#\s'\"]*"
)


def redact_url(url: str) -> str:
    """`rtsp://user:secret@host/x` → `rtsp://***@host/x`; secret query values → `***`.

    Strings without credentials come back unchanged, so this is safe to apply to file paths.
    """
    redacted = _AUTHORITY_WITH_USERINFO.sub(lambda m: f"{m['scheme']}***@", url)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", redacted)


def scrub(text: str, *secrets_of: str) -> str:
    """Redact every URL in `text`, then remove verbatim copies of the credentials found in
    `secrets_of` (URLs the text may have echoed, possibly percent-decoded or truncated)."""
    cleaned = redact_url(text)
    for url in secrets_of:
        for secret in _credentials_in(url):
            cleaned = cleaned.replace(secret, "***")
    return cleaned


def _credentials_in(url: str) -> list[str]:
    from urllib.parse import unquote

    found: list[str] = []
    match = _AUTHORITY_WITH_USERINFO.search(url)
    if match:
        userinfo = match["userinfo"]
        user, _, password = userinfo.partition(":")
        found += [userinfo, unquote(userinfo), password, unquote(password)]
        # A user name alone is not secret enough to blank out everywhere (it may be a
        # common word), but the pair "user:" is, and the password always is.
        found += [f"{user}:", f"{unquote(user)}:"]
    for m in _SECRET_QUERY.finditer(url):
        value = url[m.end():].split("&", 1)[0].split(";", 1)[0].split("#", 1)[0]
        found += [value, unquote(value)]
    # Longest first, so a password containing another secret is removed whole; skip
    # strings too short to be meaningful (they would shred unrelated text).
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)
