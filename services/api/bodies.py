"""Request bodies: read bounded JSON, validate it, and report problems one readable line per field.

The routes read their bodies here instead of through FastAPI's parameter validation, so that
(a) the size is bounded before anything is parsed, (b) a stream body goes through the same
`parse_stream` as the config file and its errors read the same, and (c) no error ever echoes a
submitted value that could hold a credential.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import ClientDisconnect, Request

from shared.settings import ConfigError, SinkSettings, StreamSettings, parse_stream, redact_url

from .errors import ApiError, InvalidRequest

MAX_BODY_BYTES = 64 * 1024  # a stream definition is well under 8 KiB; a prompt at most 2000 characters
PROMPT_MAX_CHARS = 2000  # as StreamSettings.prompt and the bus's SetPrompt
STREAM_FIELD_PREFIX = "streams."  # POST /streams bodies are one entry of the config's `streams` list


class PromptUpdate(BaseModel):
    """Body of PUT /streams/{name}/prompt."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, json_schema_extra={"examples": [{"prompt": "make it an oil painting"}]})

    prompt: str = Field(
        min_length=1, max_length=PROMPT_MAX_CHARS, strict=True,
        description=f"New style instruction (1-{PROMPT_MAX_CHARS} characters, not blank).",
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def _is_json_media_type(content_type: str | None) -> bool:
    if not content_type:
        return True  # curl --data without -H: accept, the body is still parsed strictly as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "invalid_request", "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def decode_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys, bounded nesting. Raises `InvalidRequest`."""
    if not raw.strip():
        raise InvalidRequest(["body: is empty; send a JSON object"])
    try:
        data = json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise InvalidRequest([f"body: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"]) from None
    except UnicodeDecodeError:
        raise InvalidRequest(["body: not valid JSON (the text is not UTF-8)"]) from None
    except ValueError as exc:  # from the hooks above
        raise InvalidRequest([f"body: not valid JSON ({exc})"]) from None
    except RecursionError:
        raise InvalidRequest(["body: nested too deeply"]) from None
    try:
        # JSON may spell unpaired UTF-16 surrogates ("\\ud800"); such text could never be answered or logged.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(["body: contains an unpaired surrogate escape (\\ud800-\\udfff)"]) from None
    return data


async def read_json_object(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object, or an `ApiError` (413, 415, 422) saying what is wrong."""
    content_type = request.headers.get("content-type")
    if not _is_json_media_type(content_type):
        raise ApiError(
            415, "unsupported_media_type",
            f"send the body as JSON with 'Content-Type: application/json' (got {content_type[:60]!r})",
        )
    data = decode_json(await _read_bounded(request, limit))
    if not isinstance(data, dict):
        raise InvalidRequest([f"body: expected a JSON object, got {_json_type(data)}"])
    return data


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _split_unknown_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> tuple[dict[str, Any], list[str]]:
    """`data` without the keys `model` does not have, and one problem line per such key."""
    known = {k: v for k, v in data.items() if k in model.model_fields}
    problems = []
    for key in data:
        if key in known:
            continue
        close = difflib.get_close_matches(key, list(model.model_fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = key if len(key) <= 40 else key[:37] + "..."
        problems.append(f"{where}{shown}: unknown field{hint}")
    return known, problems


def validate_stream(data: dict[str, Any]) -> StreamSettings:
    """A stream definition, as `parse_stream` validates config entries; lines named `streams.<field>`."""
    # Unknown keys are reported here, against the stream's own fields: parse_stream names them
    # relative to the whole config (its "did you mean" hints come from the top-level sections).
    known, problems = _split_unknown_keys(data, StreamSettings, STREAM_FIELD_PREFIX)
    sinks = known.get("sinks")
    if isinstance(sinks, list):
        cleaned = []
        for i, sink in enumerate(sinks):
            if isinstance(sink, dict):
                sink, sink_problems = _split_unknown_keys(sink, SinkSettings, f"{STREAM_FIELD_PREFIX}sinks.{i}.")
                problems += sink_problems
            cleaned.append(sink)
        known["sinks"] = cleaned
    try:
        stream = parse_stream(known)
    except ConfigError as exc:
        raise InvalidRequest([STREAM_FIELD_PREFIX + line for line in exc.problems] + problems) from None
    except (OSError, RuntimeError) as exc:
        # Path checks in the settings validators can fail outside pydantic's reach (a name too long
        # for the file system, '~user' of an unknown user): still the client's bad input, not a fault.
        text = redact_url(str(exc))
        text = text if len(text) <= 160 else text[:157] + "..."
        raise InvalidRequest([f"streams: a file path in this stream cannot be used: {text}", *problems]) from None
    if problems:
        raise InvalidRequest(problems)
    return stream


def validate_prompt(data: dict[str, Any]) -> str:
    """The prompt of a `PromptUpdate` body; problems named by field (`prompt: must not be empty`)."""
    try:
        return PromptUpdate.model_validate(data).prompt
    except ValidationError as exc:
        raise InvalidRequest([_problem_line(err) for err in exc.errors(include_url=False)]) from None


def _problem_line(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    kind = err["type"]
    cause = (err.get("ctx") or {}).get("error")
    if kind == "value_error" and cause is not None:
        text = str(cause)
    elif kind == "missing":
        text = "required field is missing"
    elif kind == "extra_forbidden":
        text = "unknown field (the body is {\"prompt\": \"...\"})"
    elif kind == "string_too_short":
        text = "must not be empty"
    else:
        msg = err["msg"]  # pydantic's messages do not quote the input
        text = msg[:1].lower() + msg[1:]
    return f"{loc}: {text}"
