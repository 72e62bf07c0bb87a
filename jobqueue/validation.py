"""Checks on untrusted input that the engine and the API share: a 422 that names the field and
says why, before anything is written."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from .errors import InvalidJob, InvalidRequest, JobNotFound
from .models import QUEUE_NAME, JobRequest

# A \u0000 escape that is not itself escaped (preceded by an even number of backslashes).
NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The payload as compact JSON, refusing what Postgres' jsonb cannot store (NUL characters,
    lone surrogates) with a 422 instead of a failed insert."""
    try:
        text = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as e:
        raise InvalidJob(f"payload cannot be stored as JSON: {e}", field="payload") from None
    # The substring test first: most payloads have no \u0000 at all, and it is cheaper than the regex.
    if b"\\u0000" in text and NUL_ESCAPE.search(text):
        raise InvalidJob("payload contains a NUL character, which Postgres cannot store", field="payload")
    return text


def check_id(job_id: int) -> int:
    if not 0 < job_id < 2**63:
        raise JobNotFound(f"job {job_id} not found")
    return job_id


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, error: type[InvalidJob] = InvalidJob) -> M:
    """Validate untrusted data; the error (a 422) names the first bad field, dotted, and why."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "body"
        raise error(f"{loc}: {first['msg']}", field=loc) from None


def parse_request(data: Any) -> JobRequest:
    """Validate an untrusted enqueue request."""
    return parse_model(JobRequest, data)


# --- the dashboard's search term ------------------------------------------------------------------

_ID_TERM = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes '²', '①' ...


def search_id(term: str) -> int | None:
    """The job id a search term names, or None: only 1-18 ASCII digits are an id (18 digits always
    fit a bigint; `int()` refuses superscripts and circled digits that `isdigit()` accepts)."""
    return int(term) if _ID_TERM.fullmatch(term) else None


def like_pattern(term: str) -> str:
    """`%term%` for `ILIKE $n ESCAPE '\\'`, with the term's own `\\`, `%` and `_` escaped, so a
    search for `%` finds a literal percent sign instead of every row."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def check_queue_name(queue: str) -> str:
    if not QUEUE_NAME.fullmatch(queue):
        raise InvalidJob("a queue's name is 1-100 letters, digits, '_', '.' or '-'", field="queue")
    return queue


# --- the list cursor (the API, the CLI and the client share it) ---------------------------

MAX_ID = 2**63 - 1  # ids are Postgres bigints


def encode_cursor(last_id: int | None) -> str | None:
    if last_id is None:
        return None
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str | None) -> int | None:
    """Opaque to clients (so the paging key can change); anything we did not issue is a 422."""
    if cursor is None:
        return None
    n = -1
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        tag, _, value = raw.partition(":")
        if tag == "id" and value.isdigit():
            n = int(value)
    except (binascii.Error, ValueError):
        pass
    # The round trip rejects what the lenient decoder would accept (stray characters, padding).
    if not 0 < n <= MAX_ID or encode_cursor(n) != cursor:
        raise InvalidRequest("cursor is malformed or was not issued by this API", field="cursor")
    return n
