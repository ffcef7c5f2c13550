"""Anthropic's Message Batches: Messages requests in one JSON body, answered within 24 hours.

    submit    POST {base}/v1/messages/batches {"requests": [{"custom_id", "params"}]}
    get       GET {base}/v1/messages/batches/{id}
    cancel    POST {base}/v1/messages/batches/{id}/cancel
    find      GET {base}/v1/messages/batches?limit=100 (then &after_id=last_id), newest first
    results   GET the batch's `results_url` (JSONL), once it has ended

`base` is the row's endpoint without a trailing `/v1` (it may or may not carry one, as for a
live call); headers are the online adapter's (`x-api-key`, `anthropic-version`). Each entry's
`params` is the body the online adapter would POST. A result line is `{"custom_id", "result":
{"type": "succeeded", "message"} | {"type": "errored", "error"} | {"type": "canceled"} |
{"type": "expired"}}`: a message is read by the online adapter's parser, an error classified
by its type as a live call's status would be, canceled and expired requests are `expired`.
`results_url` is followed only on the endpoint's own origin (the key goes along); another
origin is replaced by the documented path `/v1/messages/batches/{id}/results` there.

processing_status in_progress → in_progress, canceling → cancelling, ended → ended. Limits:
100,000 requests and 256 MB per body. A `custom_id` is 1 to 64 of `[a-zA-Z0-9_-]`; another is
refused by `encode_line`, before anything is sent.

Finding a job by its key: a message batch has no metadata, and the list shows no custom_id.
`find` relies on the caller's custom_ids being `"{job_key}-{n}"`: it reads the results of each
batch created since `since` that has ended, and returns the first whose custom_ids start with
`"{job_key}-"`. A batch still in progress cannot be read, so it is never found: a worker that
died after submitting a job whose batch has not ended yet will not find it (and may submit
the requests again). Reading every ended batch's results makes `find` as costly as the
batches submitted since `since`.

A JSON `response_format` that the online adapter sends as a forced tool comes back as that
tool's call, not moved into `text` as `AnthropicAdapter.complete` does: the request is not at
hand when results are read.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec
from yarl import URL

from ._batch_http import BatchHTTP, check_size, jsonl
from ._http import strip_v1
from .anthropic import AnthropicAdapter
from .anthropic_stream import ERROR_STATUS
from .base import Target
from .batch import BatchItem, BatchJob, BatchLimits, BatchResult, JobState
from .errors import BadRequest, ProviderError, ServerError

__all__ = ["LIMITS", "AnthropicBatchClient"]

LIMITS = BatchLimits(max_requests=100_000, max_bytes=256 * 1024 * 1024)
_LIST_PAGE = 100
_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

_STATES: dict[str, JobState] = {
    "in_progress": "in_progress",
    "canceling": "cancelling",
    "ended": "ended",
}

_ERROR_STATUS = {**ERROR_STATUS, "invalid_request": 400}
"""The HTTP status each of Anthropic's error types stands for (an unknown type: 500); a batch
result may also say `invalid_request`."""


class _Entry(msgspec.Struct):
    custom_id: str
    params: msgspec.Raw


class _Counts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class _Batch(msgspec.Struct):
    id: str
    processing_status: str
    request_counts: _Counts | None = None
    created_at: str | None = None
    results_url: str | None = None


class _Page(msgspec.Struct):
    data: list[_Batch]
    has_more: bool = False
    last_id: str | None = None


_NULL = msgspec.Raw(b"null")  # a Raw field's absence (msgspec has no optional Raw)


class _ErrorType(msgspec.Struct):
    type: str | None = None
    error: msgspec.Raw = _NULL  # {"type": "error", "error": {"type", "message"}}


class _Result(msgspec.Struct):
    type: str
    message: msgspec.Raw = _NULL
    error: msgspec.Raw = _NULL


class _Line(msgspec.Struct):
    custom_id: str
    result: _Result


_encode = msgspec.json.Encoder().encode
_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_page = msgspec.json.Decoder(_Page).decode
_decode_line = msgspec.json.Decoder(_Line).decode
_decode_error_type = msgspec.json.Decoder(_ErrorType).decode


def _created(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def job_of(batch: _Batch) -> BatchJob:
    """A message batch as the provider-neutral job."""
    counts = batch.request_counts or _Counts()
    return BatchJob(
        id=batch.id,
        state=_STATES.get(batch.processing_status, "in_progress"),
        provider_state=batch.processing_status,
        requests=(
            counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
        ),
        succeeded=counts.succeeded,
        errored=counts.errored + counts.canceled + counts.expired,
        created_at=_created(batch.created_at),
    )


def error_status(error: bytes) -> int:
    """The status an errored result's error stands for, by its (inner) type."""
    try:
        outer = _decode_error_type(error)
        kind = outer.type
        if bytes(outer.error) != b"null":
            kind = _decode_error_type(outer.error).type
    except (msgspec.MsgspecError, ValueError):
        return 500
    return _ERROR_STATUS.get(kind or "", 500)


class AnthropicBatchClient:
    """`BatchClient` for Anthropic's Message Batches; bodies built and answers read by the
    online `AnthropicAdapter`."""

    provider = "anthropic"
    limits: BatchLimits = LIMITS

    def __init__(
        self, adapter: AnthropicAdapter | None = None, *, limits: BatchLimits = LIMITS
    ) -> None:
        self.limits = limits
        self.adapter = adapter if adapter is not None else AnthropicAdapter()
        self._http = BatchHTTP(self.adapter)

    # -- the wire ---------------------------------------------------------------------------

    def encode_line(self, target: Target, item: BatchItem) -> bytes:
        """The request's entry in the body's `requests` (a comma joins it to the next)."""
        if not _CUSTOM_ID.match(item.custom_id):
            why = f"custom_id {item.custom_id!r} is not 1 to 64 of [a-zA-Z0-9_-]"
            raise self.adapter.error(BadRequest, target, why)
        try:
            params = self.adapter.build_body(target, item.request)
        except (ValueError, TypeError) as exc:
            why = f"request {item.custom_id!r} cannot be encoded as JSON: {exc}"
            raise self.adapter.error(BadRequest, target, why) from None
        return _encode(_Entry(item.custom_id, msgspec.Raw(params)))

    def _base(self, target: Target) -> str:
        endpoint = self.adapter.endpoint_for(target)
        if not endpoint:
            raise self._http.refuse(target, "target has no endpoint")
        return strip_v1(endpoint)

    def _url(self, target: Target, path: str) -> URL:
        try:
            return URL(self._base(target) + "/v1/messages/batches" + path)
        except ValueError:
            raise self._http.refuse(target, "invalid endpoint URL") from None

    def _batch(self, target: Target, payload: bytes) -> _Batch:
        return self._http.decoded(target, _decode_batch, payload, "message batch")

    # -- the job ----------------------------------------------------------------------------

    async def submit(self, target: Target, items: list[BatchItem], job_key: str) -> BatchJob:
        """Create the batch (`job_key` is not sent: Anthropic keeps no metadata; the caller's
        custom_ids carry it, see the module's docstring)."""
        entries = [self.encode_line(target, item) for item in items]
        check_size(self._http, target, entries, self.limits)
        body = b'{"requests":[' + b",".join(entries) + b"]}"
        return job_of(
            self._batch(target, await self._http.send(target, "POST", self._url(target, ""), body))
        )

    async def get(self, target: Target, batch_id: str) -> BatchJob:
        return job_of(await self._read_batch(target, batch_id))

    async def _read_batch(self, target: Target, batch_id: str) -> _Batch:
        return self._batch(
            target, await self._http.send(target, "GET", self._url(target, f"/{batch_id}"))
        )

    async def cancel(self, target: Target, batch_id: str) -> BatchJob:
        url = self._url(target, f"/{batch_id}/cancel")
        return job_of(self._batch(target, await self._http.send(target, "POST", url, b"")))

    async def find(self, target: Target, job_key: str, since: datetime) -> BatchJob | None:
        """The ended batch created at or after `since` whose custom_ids start with
        `"{job_key}-"`; None when there is none, or only batches not ended yet (which
        cannot be read: see the module's docstring)."""
        prefix = f"{job_key}-"
        after: str | None = None
        while True:
            path = f"?limit={_LIST_PAGE}" + (f"&after_id={after}" if after else "")
            payload = await self._http.send(target, "GET", self._url(target, path))
            page = self._http.decoded(target, _decode_page, payload, "batch list")
            for batch in page.data:
                job = job_of(batch)
                if job.created_at is not None and job.created_at < since:
                    return None
                if job.state == "ended" and await self._holds(target, batch, prefix):
                    return job
            if not page.has_more or not page.data:
                return None
            after = page.last_id or page.data[-1].id

    async def _holds(self, target: Target, batch: _Batch, prefix: str) -> bool:
        for line in jsonl(await self._http.send(target, "GET", self._results_url(target, batch))):
            try:
                if _decode_line(line).custom_id.startswith(prefix):
                    return True
            except (msgspec.MsgspecError, ValueError) as exc:
                raise self._http.malformed(target, "results line", exc) from exc
        return False

    def _results_url(self, target: Target, batch: _Batch) -> URL:
        """`results_url` when it is on the endpoint's origin, else the documented path."""
        own = self._url(target, f"/{batch.id}/results")
        if batch.results_url:
            try:
                given = URL(batch.results_url)
            except ValueError:
                return own
            if given.is_absolute() and given.origin() == own.origin():
                return given
        return own

    async def results(self, target: Target, batch_id: str) -> list[BatchResult]:
        batch = await self._read_batch(target, batch_id)
        if batch.processing_status != "ended":
            why = f"batch {batch_id} is {batch.processing_status}: its results are not ready"
            raise self._http.refuse(target, why)
        payload = await self._http.send(target, "GET", self._results_url(target, batch))
        return [self._result(target, line) for line in jsonl(payload)]

    def _result(self, target: Target, line: bytes) -> BatchResult:
        try:
            entry = _decode_line(line)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise self._http.malformed(target, "results line", exc) from exc
        result, custom_id = entry.result, entry.custom_id
        if result.type == "succeeded":
            try:
                answer = self._http.answer(target, bytes(result.message), None)
            except ProviderError as exc:
                return BatchResult(custom_id=custom_id, error=exc)
            return BatchResult(custom_id=custom_id, result=answer)
        if result.type in ("canceled", "expired"):
            return BatchResult(custom_id=custom_id, expired=True)
        if result.type == "errored":
            error = bytes(result.error)
            found = self._http.answer_error(target, error_status(error), error, None)
            return BatchResult(custom_id=custom_id, error=found)
        why = f"a result of type {result.type!r} this client cannot read"
        return BatchResult(custom_id=custom_id, error=self.adapter.error(ServerError, target, why))

    async def close(self) -> None:
        await self._http.close()
