"""The fake provider's batch APIs: OpenAI's Batch API and Anthropic's Message Batches, so the
worker's batch lane runs against a real HTTP wire in seconds.

Routes (each also under `/{profile}`; a batch and a file belong to the profile they were made
on, and a batch request is answered with that profile's `invalid_output_rate`):

    POST /v1/files                          multipart `purpose`, `file`: a file object
    GET  /v1/files/{file_id}                the file object
    GET  /v1/files/{file_id}/content        the file's bytes
    POST /v1/batches                        {"input_file_id", "endpoint", "completion_window",
                                            "metadata"}: a batch object
    GET  /v1/batches?limit=&after=          newest first
    GET  /v1/batches/{batch_id}             POST /v1/batches/{batch_id}/cancel
    POST /anthropic/v1/messages/batches     {"requests": [{"custom_id", "params"}]}
    GET  /anthropic/v1/messages/batches?limit=&after_id=&before_id=
    GET  /anthropic/v1/messages/batches/{id}             POST .../{id}/cancel
    GET  /anthropic/v1/messages/batches/{id}/results     JSONL, once the batch has ended
    GET  /admin/batches                     every batch made since the last reset
    POST /admin/reset                       also forgets every batch and file

The clock is accelerated: a batch runs `batch_seconds` (not 24 h), read off `clock` whenever
it is looked at (nothing runs in the background). OpenAI: `validating` for the first third; a
file that fails validation (a line that is no JSON object, has no `custom_id` or `body`, a
`method` other than POST, a `url` other than the batch's endpoint, a `custom_id` used twice)
makes the batch `failed` then, its `errors` naming each line. Otherwise `in_progress`, its
requests answered one by one over the rest of the time, then `completed`, or `expired` when a
request was left unfinished. Anthropic: `in_progress` from the start, its requests answered
one by one, then `ended`. A cancel makes it `cancelling` (`canceling`) for a third of
`batch_seconds`, then `cancelled` (`ended`): requests answered before the cancel keep their
answers, the others are cancelled.

Each request is answered as the online route answers the same body (`FakeProvider.answer`,
`FakeAnthropic.answer`), computed when the batch is made; a body that route refuses is that
request's 400. A user message containing `[batch:error]` fails its request (OpenAI: an error
file line whose response is a 500 with an OpenAI error body; Anthropic: `errored`,
`api_error`); `[batch:expire]` leaves it unfinished, so it comes back expired (OpenAI: an
error file line `batch_expired`, the batch `expired`; Anthropic: an `expired` result, the batch
`ended` with it counted). Unanswered requests of a cancelled batch: `batch_cancelled` lines,
`canceled` results. OpenAI's `request_counts`: `total` (0 while validating), `completed`
(answered 200), `failed` (answered with an error); expired and cancelled requests are in
neither. The output file holds the 200 answers, the error file every other line; an empty one
is not made (its id null).

The profile's latency, error and fault settings do not apply here, and batch requests are not
in the `Call` log: `GET /admin/batches` is what a test reads (provider, profile, id, status,
metadata, request count, custom_ids, created_at), e.g. to prove no job was submitted twice.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from aiohttp import BodyPartReader, web

from llm_worker.devkit.fake_anthropic import FakeAnthropic, anthropic_error
from llm_worker.devkit.fake_provider import FakeProvider, Profile
from llm_worker.devkit.fake_wire import decode_any, encode

__all__ = ["BATCH_ERROR", "BATCH_EXPIRE", "FakeBatches"]

BATCH_ERROR = "[batch:error]"
"""In a user message: the request fails."""
BATCH_EXPIRE = "[batch:expire]"
"""In a user message: the request is never answered and comes back expired."""

CHAT_ENDPOINT = "/v1/chat/completions"  # the one OpenAI batch endpoint the fake answers
WINDOW = "24h"  # OpenAI's only completion window
WINDOW_S = 24 * 3600  # the nominal window (`expires_at`); the fake ends in `batch_seconds`
VALIDATING = 1 / 3  # OpenAI: the share of `batch_seconds` spent validating
CANCELLING = 1 / 3  # after a cancel: this share of `batch_seconds` until cancelled
MAX_FILE_BYTES = 200 * 1024 * 1024  # OpenAI's limit on a batch input file
MAX_BODY_BYTES = 256 * 1024 * 1024  # Anthropic's limit on a Message Batches request
MAX_JSON_BYTES = 1024 * 1024  # any other request body
MAX_ANTHROPIC_REQUESTS = 100_000  # Anthropic's limit on requests per batch
MAX_METADATA = 16  # OpenAI: keys per metadata; keys up to 64 chars, values up to 512
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
_CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # Anthropic's custom_id pattern
_ANTHROPIC = "/anthropic/v1/messages/batches"

Provider = Literal["openai", "anthropic"]
Outcome = Literal["succeeded", "errored", "expire"]


class _Request(msgspec.Struct, kw_only=True):
    """One request of a batch: its answer (or error body), made when the batch is."""

    custom_id: str
    outcome: Outcome
    body: Any = None  # a completion / message, or an error body
    status: int = 200  # OpenAI: the answer's HTTP status
    due: float = 0.0  # seconds after the batch was made when it is answered


class _Batch(msgspec.Struct, kw_only=True):
    provider: Provider
    id: str
    profile: str
    created: float  # the clock's time
    seconds: float  # how long it runs (the server's `batch_seconds` then)
    requests: list[_Request]
    metadata: dict[str, str] | None = None
    input_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # OpenAI: validation failed
    cancel_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    settled: bool = False  # its end was seen (OpenAI: its files are written)

    @property
    def end(self) -> float:
        """When it reaches its final state."""
        if self.errors:
            return self.created + self.seconds * VALIDATING
        if self.cancel_at is not None:
            return self.cancel_at + self.seconds * CANCELLING
        return self.created + self.seconds

    def answered(self, request: _Request, now: float) -> bool:
        """Whether `request` has its answer at `now` (never after a cancel)."""
        if request.outcome == "expire" or self.errors:
            return False
        until = now if self.cancel_at is None else min(now, self.cancel_at)
        return self.created + request.due <= until


class _File(msgspec.Struct, kw_only=True):
    id: str
    profile: str
    filename: str
    purpose: str
    created_at: int
    content: bytes

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
        }


def _spread(requests: list[_Request], seconds: float, start: float) -> None:
    """Answer times evenly over the running part (`start`..1 of `seconds`)."""
    n = len(requests)
    for i, request in enumerate(requests):
        request.due = min(seconds, seconds * (start + (1 - start) * (i + 1) / n))


def _user_text(body: Any) -> str:
    """The text of a body's user messages (string or text-block content, either wire)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    texts: list[str] = []
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [
                b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
            ]
    return "\n".join(texts)


def _fault(body: Any) -> Outcome | None:
    text = _user_text(body)
    if BATCH_ERROR in text:
        return "errored"
    if BATCH_EXPIRE in text:
        return "expire"
    return None


def _rfc3339(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def _openai_error_body(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = _openai_error_body(message, kind, code)
    body["error"]["param"] = param
    return web.Response(status=status, body=encode(body), content_type="application/json")


def _json(doc: Any) -> web.Response:
    return web.Response(body=encode(doc), content_type="application/json")


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The request body, None when it is longer than `limit` (read past aiohttp's
    `client_max_size`: batch bodies are large)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _limit(value: str | None, default: int, most: int) -> int | None:
    """A `limit` query parameter, None when it is no integer in 1..most."""
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 1 <= number <= most else None


def _page(
    items: list[_Batch], limit: int, after: str | None, before: str | None = None
) -> tuple[list[_Batch], bool] | None:
    """`limit` items (newest first) after or before the cursor and whether more lie beyond;
    None when the cursor is no item of the list."""
    ids = [b.id for b in items]
    if after is not None:
        if after not in ids:
            return None
        rest = items[ids.index(after) + 1 :]
        return rest[:limit], len(rest) > limit
    if before is not None:
        if before not in ids:
            return None
        head = items[: ids.index(before)]
        return head[-limit:], len(head) > limit
    return items[:limit], len(items) > limit


def _metadata_problem(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        return f"metadata must be an object of at most {MAX_METADATA} pairs"
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            return "metadata keys are strings up to 64 chars, values strings up to 512"
    return None


def _problem(code: str, message: str, line: int, param: str | None = None) -> dict[str, Any]:
    """One entry of a failed OpenAI batch's `errors`."""
    return {"code": code, "message": message, "param": param, "line": line}


def _line_problems(doc: Any, number: int, seen: set[str]) -> list[dict[str, Any]]:
    """What OpenAI's validation finds wrong with line `number` of an input file."""
    if not isinstance(doc, dict):
        return [_problem("invalid_json_line", "This line is not a JSON object.", number)]
    found = []
    custom_id = doc.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        found.append(_problem("missing_required_parameter", "No custom_id.", number, "custom_id"))
    elif custom_id in seen:
        message = f"The custom_id {custom_id!r} is a duplicate of another request."
        found.append(_problem("duplicate_custom_id", message, number, "custom_id"))
    if doc.get("method") != "POST":
        found.append(_problem("invalid_method", "The method must be POST.", number, "method"))
    if doc.get("url") != CHAT_ENDPOINT:
        message = f"The url must be the batch's endpoint {CHAT_ENDPOINT}."
        found.append(_problem("invalid_url", message, number, "url"))
    if not isinstance(doc.get("body"), dict):
        found.append(_problem("missing_required_parameter", "No body object.", number, "body"))
    return found


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeBatches:
    """The batch routes over a `FakeProvider`'s profiles and its two answer-builders. Batches
    and files live in memory until `reset`."""

    def __init__(
        self,
        provider: FakeProvider,
        anthropic: FakeAnthropic,
        *,
        batch_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (math.isfinite(batch_seconds) and batch_seconds > 0):
            raise ValueError("batch_seconds must be a finite number > 0")
        self.provider = provider
        self.anthropic = anthropic
        self.batch_seconds = batch_seconds
        self._clock = clock
        self._batches: dict[str, _Batch] = {}  # in the order they were made
        self._files: dict[str, _File] = {}

    def add_routes(self, app: web.Application, profile: str) -> None:
        """Register the batch routes (`profile` is the route's `{profile:...}` part)."""
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/files", self.upload_file),
            ("GET", "/v1/files/{file_id}", self.get_file),
            ("GET", "/v1/files/{file_id}/content", self.file_content),
            ("POST", "/v1/batches", self.create_batch),
            ("GET", "/v1/batches", self.list_batches),
            ("GET", "/v1/batches/{batch_id}", self.get_batch),
            ("POST", "/v1/batches/{batch_id}/cancel", self.cancel_batch),
            ("POST", _ANTHROPIC, self.create_message_batch),
            ("GET", _ANTHROPIC, self.list_message_batches),
            ("GET", _ANTHROPIC + "/{batch_id}", self.get_message_batch),
            ("POST", _ANTHROPIC + "/{batch_id}/cancel", self.cancel_message_batch),
            ("GET", _ANTHROPIC + "/{batch_id}/results", self.message_batch_results),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
            app.router.add_route(method, f"/{profile}{path}", handler)

    # -- state ---------------------------------------------------------------------------------

    def batches(self) -> list[dict[str, Any]]:
        """Every batch made since the last reset, oldest first (`GET /admin/batches`)."""
        now = self._clock()
        return [
            {
                "provider": b.provider,
                "profile": b.profile,
                "id": b.id,
                "status": self._status(b, now),
                "metadata": b.metadata,
                "requests": len(b.requests),
                "custom_ids": [r.custom_id for r in b.requests],
                "created_at": b.created,
            }
            for b in self._batches.values()
        ]

    def reset(self) -> None:
        self._batches.clear()
        self._files.clear()

    def _status(self, batch: _Batch, now: float) -> str:
        self._settle(batch, now)
        if batch.provider == "anthropic":
            if now >= batch.end:
                return "ended"
            return "in_progress" if batch.cancel_at is None else "canceling"
        if now >= batch.end:
            if batch.errors:
                return "failed"
            if batch.cancel_at is not None:
                return "cancelled"
            expired = any(r.outcome == "expire" for r in batch.requests)
            return "expired" if expired else "completed"
        if batch.cancel_at is not None:
            return "cancelling"
        started = now >= batch.created + batch.seconds * VALIDATING
        return "in_progress" if started else "validating"

    def _settle(self, batch: _Batch, now: float) -> None:
        """At its end, once: an OpenAI batch's output and error files."""
        if batch.settled or now < batch.end:
            return
        batch.settled = True
        if batch.provider != "openai" or batch.errors:
            return
        output: list[bytes] = []
        errors: list[bytes] = []
        code, message = "batch_expired", "The request was not run within the completion window."
        if batch.cancel_at is not None:
            code, message = "batch_cancelled", "The batch was cancelled before the request ran."
        for request in batch.requests:
            line: dict[str, Any] = {"id": f"batch_req_{secrets.token_hex(12)}"}
            line["custom_id"] = request.custom_id
            if batch.answered(request, batch.end):
                response = {"status_code": request.status, "request_id": _request_id()}
                line |= {"response": {**response, "body": request.body}, "error": None}
                (output if request.status == 200 else errors).append(encode(line))
            else:
                line |= {"response": None, "error": {"code": code, "message": message}}
                errors.append(encode(line))
        batch.output_file_id = self._keep(batch, output, "output")
        batch.error_file_id = self._keep(batch, errors, "error")

    def _keep(self, batch: _Batch, lines: list[bytes], kind: str) -> str | None:
        if not lines:
            return None
        content = b"".join(line + b"\n" for line in lines)
        file = self._add_file(batch.profile, f"{batch.id}_{kind}.jsonl", "batch_output", content)
        return file.id

    def _add_file(self, profile: str, filename: str, purpose: str, content: bytes) -> _File:
        file = _File(
            id=f"file-{secrets.token_hex(12)}",
            profile=profile,
            filename=filename,
            purpose=purpose,
            created_at=int(self._clock()),
            content=content,
        )
        self._files[file.id] = file
        return file

    def _profile(self, request: web.Request) -> tuple[str, Profile] | None:
        name = request.match_info.get("profile", "default")
        try:
            return name, self.provider.profile(name)
        except ValueError:
            return None

    def _find(self, request: web.Request, provider: Provider) -> _Batch | None:
        batch = self._batches.get(request.match_info["batch_id"])
        name = request.match_info.get("profile", "default")
        if batch is None or batch.provider != provider or batch.profile != name:
            return None
        return batch

    def _newest_first(self, provider: Provider, profile: str) -> list[_Batch]:
        batches = self._batches.values()
        return [b for b in reversed(batches) if b.provider == provider and b.profile == profile]

    # -- OpenAI --------------------------------------------------------------------------------

    async def upload_file(self, request: web.Request) -> web.Response:
        found = self._profile(request)
        if found is None:
            return _openai_error(404, "unknown profile")
        if not request.content_type.startswith("multipart/"):
            return _openai_error(400, "a file upload is multipart/form-data")
        purpose = filename = None
        content: bytes | None = b""
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or "upload.jsonl"
                content = await _read_part(part, MAX_FILE_BYTES)
        if content is None:
            return _openai_error(413, f"file larger than {MAX_FILE_BYTES} bytes")
        if filename is None:
            return _openai_error(400, "missing required parameter 'file'", param="file")
        if purpose not in PURPOSES:
            return _openai_error(400, f"invalid purpose {purpose!r}", param="purpose")
        return _json(self._add_file(found[0], filename, purpose, content).view())

    def _file(self, request: web.Request) -> _File | None:
        file = self._files.get(request.match_info["file_id"])
        name = request.match_info.get("profile", "default")
        return file if file is not None and file.profile == name else None

    async def get_file(self, request: web.Request) -> web.Response:
        file = self._file(request)
        if file is None:
            return _no_file(request.match_info["file_id"])
        return _json(file.view())

    async def file_content(self, request: web.Request) -> web.Response:
        file = self._file(request)
        if file is None:
            return _no_file(request.match_info["file_id"])
        return web.Response(body=file.content, content_type="application/octet-stream")

    async def create_batch(self, request: web.Request) -> web.Response:
        found = self._profile(request)
        if found is None:
            return _openai_error(404, "unknown profile")
        raw = await _read(request, MAX_JSON_BYTES)
        try:
            doc = decode_any(raw or b"")
        except msgspec.DecodeError:
            doc = None
        if not isinstance(doc, dict):
            return _openai_error(400, "the body must be a JSON object")
        file_id = doc.get("input_file_id")
        endpoint = doc.get("endpoint")
        file = self._files.get(file_id) if isinstance(file_id, str) else None
        if file is None or file.profile != found[0]:
            return _no_file(str(file_id), param="input_file_id")
        if file.purpose != "batch":
            message = f"file {file_id} has purpose {file.purpose!r}, not 'batch'"
            return _openai_error(400, message, param="input_file_id")
        if endpoint != CHAT_ENDPOINT:
            message = f"the fake provider batches only {CHAT_ENDPOINT}"
            return _openai_error(400, message, param="endpoint")
        if doc.get("completion_window") != WINDOW:
            message = f"completion_window must be {WINDOW!r}"
            return _openai_error(400, message, param="completion_window")
        problem = _metadata_problem(doc.get("metadata"))
        if problem is not None:
            return _openai_error(400, problem, param="metadata")
        requests, errors = self._read_input(file.content, found[1])
        batch = _Batch(
            provider="openai",
            id=f"batch_{secrets.token_hex(16)}",
            profile=found[0],
            created=self._clock(),
            seconds=self.batch_seconds,
            requests=requests,
            metadata=doc.get("metadata"),
            input_file_id=file.id,
            errors=errors or None,
        )
        self._batches[batch.id] = batch
        return _json(self._openai_view(batch))

    def _read_input(
        self, content: bytes, profile: Profile
    ) -> tuple[list[_Request], list[dict[str, Any]]]:
        """The requests of an input file, or the problems that fail its batch."""
        errors: list[dict[str, Any]] = []
        lines: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for number, text in enumerate(content.splitlines(), 1):
            if not text.strip():
                continue
            try:
                doc = decode_any(text)
            except msgspec.DecodeError:
                doc = None
            errors += _line_problems(doc, number, seen)
            custom_id = doc.get("custom_id") if isinstance(doc, dict) else None
            if isinstance(custom_id, str):
                seen.add(custom_id)
                lines.append((custom_id, doc.get("body") if isinstance(doc, dict) else None))
        if not lines and not errors:
            errors.append(_problem("empty_file", "The input file holds no requests.", 1))
        if errors:
            return [], errors
        requests = [self._openai_request(custom_id, body, profile) for custom_id, body in lines]
        _spread(requests, self.batch_seconds, VALIDATING)
        return requests, []

    def _openai_request(self, custom_id: str, body: Any, profile: Profile) -> _Request:
        fault = _fault(body)
        if fault == "expire":
            return _Request(custom_id=custom_id, outcome="expire")
        if fault == "errored":
            error = _openai_error_body("fake provider: injected batch error", "server_error", None)
            return _Request(custom_id=custom_id, outcome="errored", body=error, status=500)
        try:
            answer = self.provider.answer(encode(body), profile)
        except msgspec.DecodeError as exc:
            error = _openai_error_body(
                f"invalid request body: {exc}", "invalid_request_error", None
            )
            return _Request(custom_id=custom_id, outcome="errored", body=error, status=400)
        return _Request(custom_id=custom_id, outcome="succeeded", body=answer)

    def _openai_view(self, batch: _Batch) -> dict[str, Any]:
        now = self._clock()
        status = self._status(batch, now)
        created = batch.created
        started = created + batch.seconds * VALIDATING
        cancelled = math.inf if batch.cancel_at is None else batch.cancel_at
        ran = batch.errors is None and cancelled > started
        answered = [r for r in batch.requests if batch.answered(r, now)]
        end = int(batch.end)
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": CHAT_ENDPOINT,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": WINDOW,
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": int(created),
            "in_progress_at": int(started) if ran and now >= started else None,
            "expires_at": int(created) + WINDOW_S,
            "finalizing_at": end if status in ("completed", "expired") else None,
            "completed_at": end if status == "completed" else None,
            "failed_at": end if status == "failed" else None,
            "expired_at": end if status == "expired" else None,
            "cancelling_at": None if batch.cancel_at is None else int(batch.cancel_at),
            "cancelled_at": end if status == "cancelled" else None,
            "request_counts": {
                "total": 0 if status in ("validating", "failed") else len(batch.requests),
                "completed": sum(r.status == 200 for r in answered),
                "failed": sum(r.status != 200 for r in answered),
            },
            "metadata": batch.metadata,
        }

    async def get_batch(self, request: web.Request) -> web.Response:
        batch = self._find(request, "openai")
        if batch is None:
            return _no_batch(request)
        return _json(self._openai_view(batch))

    async def cancel_batch(self, request: web.Request) -> web.Response:
        batch = self._find(request, "openai")
        if batch is None:
            return _no_batch(request)
        now = self._clock()
        status = self._status(batch, now)
        if status not in ("validating", "in_progress", "cancelling"):
            return _openai_error(400, f"Cannot cancel a batch with status {status!r}.")
        if batch.cancel_at is None:
            batch.cancel_at = now
        return _json(self._openai_view(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        found = self._profile(request)
        if found is None:
            return _openai_error(404, "unknown profile")
        limit = _limit(request.query.get("limit"), 20, 100)
        if limit is None:
            return _openai_error(400, "limit must be an integer in 1..100", param="limit")
        after = request.query.get("after")
        page = _page(self._newest_first("openai", found[0]), limit, after)
        if page is None:
            return _openai_error(400, f"no batch {after!r} to list after", param="after")
        batches, more = page
        data = [self._openai_view(b) for b in batches]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    # -- Anthropic -----------------------------------------------------------------------------

    async def create_message_batch(self, request: web.Request) -> web.Response:
        found = self._profile(request)
        if found is None:
            return anthropic_error(404, "unknown profile")
        raw = await _read(request, MAX_BODY_BYTES)
        if raw is None:
            return anthropic_error(413, f"request larger than {MAX_BODY_BYTES} bytes")
        try:
            doc = decode_any(raw)
        except msgspec.DecodeError:
            doc = None
        items = doc.get("requests") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ANTHROPIC_REQUESTS:
            message = f"requests: a list of 1 to {MAX_ANTHROPIC_REQUESTS} requests"
            return anthropic_error(400, message)
        seen: set[str] = set()
        for index, item in enumerate(items):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.match(custom_id):
                message = f"requests.{index}.custom_id: 1 to 64 of [A-Za-z0-9_-]"
                return anthropic_error(400, message)
            if custom_id in seen:
                return anthropic_error(400, f"requests.{index}: duplicate custom_id {custom_id}")
            if not isinstance(item.get("params"), dict):
                return anthropic_error(400, f"requests.{index}.params: an object")
            seen.add(custom_id)
        requests = [self._anthropic_request(i["custom_id"], i["params"], found[1]) for i in items]
        _spread(requests, self.batch_seconds, 0.0)
        batch = _Batch(
            provider="anthropic",
            id=f"msgbatch_{secrets.token_hex(12)}",
            profile=found[0],
            created=self._clock(),
            seconds=self.batch_seconds,
            requests=requests,
        )
        self._batches[batch.id] = batch
        return _json(self._anthropic_view(batch, request))

    def _anthropic_request(self, custom_id: str, params: Any, profile: Profile) -> _Request:
        fault = _fault(params)
        if fault == "expire":
            return _Request(custom_id=custom_id, outcome="expire")
        if fault == "errored":
            error = {"type": "api_error", "message": "fake provider: injected batch error"}
            return _Request(custom_id=custom_id, outcome="errored", body=error, status=500)
        try:
            answer = self.anthropic.answer(encode(params), profile)
        except msgspec.DecodeError as exc:
            error = {"type": "invalid_request_error", "message": f"invalid params: {exc}"}
            return _Request(custom_id=custom_id, outcome="errored", body=error, status=400)
        return _Request(custom_id=custom_id, outcome="succeeded", body=answer)

    def _anthropic_view(self, batch: _Batch, request: web.Request) -> dict[str, Any]:
        now = self._clock()
        status = self._status(batch, now)
        ended = status == "ended"
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for item in batch.requests:
            if batch.answered(item, now):
                counts["succeeded" if item.status == 200 else "errored"] += 1
            elif not ended:
                counts["processing"] += 1
            else:
                counts["canceled" if batch.cancel_at is not None else "expired"] += 1
        results_url = None
        if ended:
            profile = request.match_info.get("profile")
            prefix = f"/{profile}" if profile is not None else ""
            results_url = f"{request.url.origin()}{prefix}{_ANTHROPIC}/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _rfc3339(batch.end) if ended else None,
            "created_at": _rfc3339(batch.created),
            "expires_at": _rfc3339(batch.created + WINDOW_S),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch.cancel_at),
            "results_url": results_url,
        }

    async def get_message_batch(self, request: web.Request) -> web.Response:
        batch = self._find(request, "anthropic")
        if batch is None:
            return _no_message_batch(request)
        return _json(self._anthropic_view(batch, request))

    async def cancel_message_batch(self, request: web.Request) -> web.Response:
        batch = self._find(request, "anthropic")
        if batch is None:
            return _no_message_batch(request)
        now = self._clock()
        if self._status(batch, now) == "ended":
            return anthropic_error(400, f"message batch {batch.id} has already ended")
        if batch.cancel_at is None:
            batch.cancel_at = now
        return _json(self._anthropic_view(batch, request))

    async def list_message_batches(self, request: web.Request) -> web.Response:
        found = self._profile(request)
        if found is None:
            return anthropic_error(404, "unknown profile")
        query = request.query
        limit = _limit(query.get("limit"), 20, 1000)
        if limit is None:
            return anthropic_error(400, "limit: an integer in 1..1000")
        after, before = query.get("after_id"), query.get("before_id")
        if after is not None and before is not None:
            return anthropic_error(400, "give after_id or before_id, not both")
        page = _page(self._newest_first("anthropic", found[0]), limit, after, before)
        if page is None:
            return anthropic_error(400, f"no message batch {after or before!r} in this list")
        batches, more = page
        data = [self._anthropic_view(b, request) for b in batches]
        return _json(
            {
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def message_batch_results(self, request: web.Request) -> web.Response:
        batch = self._find(request, "anthropic")
        if batch is None:
            return _no_message_batch(request)
        if self._status(batch, self._clock()) != "ended":
            return anthropic_error(400, f"message batch {batch.id} has not ended yet")
        lines = []
        for item in batch.requests:
            result: dict[str, Any]
            if not batch.answered(item, batch.end):
                result = {"type": "canceled" if batch.cancel_at is not None else "expired"}
            elif item.status == 200:
                result = {"type": "succeeded", "message": item.body}
            else:
                result = {"type": "errored", "error": {"type": "error", "error": item.body}}
            lines.append(encode({"custom_id": item.custom_id, "result": result}) + b"\n")
        return web.Response(body=b"".join(lines), content_type="application/x-jsonl")

    # -- admin ---------------------------------------------------------------------------------

    async def admin_batches(self, request: web.Request) -> web.Response:
        return _json({"batches": self.batches()})

    async def admin_reset(self, request: web.Request) -> web.Response:
        """`POST /admin/reset`: forget every batch and file, then zero the provider's counters."""
        self.reset()
        return await self.provider.reset_counters(request)


def _request_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def _no_file(file_id: str, param: str = "id") -> web.Response:
    return _openai_error(404, f"No such File object: {file_id}", param=param)


def _no_batch(request: web.Request) -> web.Response:
    return _openai_error(404, f"No such Batch object: {request.match_info['batch_id']}")


def _no_message_batch(request: web.Request) -> web.Response:
    return anthropic_error(404, f"no message batch {request.match_info['batch_id']}")
