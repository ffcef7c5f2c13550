"""OpenAI's Batch API: chat completions in a JSONL file, answered within 24 hours.

    submit    POST {endpoint}/files (multipart: purpose=batch, file=the JSONL), then
              POST {endpoint}/batches {input_file_id, endpoint: /v1/chat/completions,
              completion_window: 24h, metadata: {llm_worker_job: job_key}}
    get       GET {endpoint}/batches/{id}
    cancel    POST {endpoint}/batches/{id}/cancel
    find      GET {endpoint}/batches?limit=100 (then &after=last_id), newest first, until a
              batch older than `since`: the one whose metadata carries the job key
    results   GET {endpoint}/files/{output_file_id}/content and .../{error_file_id}/content

`endpoint` is the row's base URL that already ends in `/v1`, as for a live call. Each line is
`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`, the body the online
adapter would POST. A result line is `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}`: a 2xx body is read by the online adapter's parser, another
status is classified as a live call's would be; an `error` of code `batch_expired` or
`batch_cancelled` (the window passed, the job was cancelled) is `expired`. A request of an
expired or cancelled job that is in neither file (the input file is read for its ids) is
`expired` too; the requests of a job that failed validation all carry its errors.

Statuses: validating → submitted, in_progress and finalizing → in_progress, completed →
ended; failed, expired, cancelling, cancelled keep their names. A status this module does
not know is reported as in_progress (its own word kept in `provider_state`), so a job is
polled on rather than given up. Limits: 50,000 requests and 200 MB per file.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import msgspec
from yarl import URL

from ._batch_http import BatchHTTP, check_size, jsonl
from .base import ProviderResult, Target
from .batch import FINAL_STATES, BatchItem, BatchJob, BatchLimits, BatchResult, JobState
from .errors import BadRequest, ProviderError, ServerError
from .openai_compatible import OpenAIAdapter, OpenAICompatibleAdapter

__all__ = ["CHAT_URL", "JOB_KEY", "LIMITS", "OpenAIBatchClient"]

CHAT_URL = "/v1/chat/completions"
JOB_KEY = "llm_worker_job"  # the metadata key that carries the worker's job key
LIMITS = BatchLimits(max_requests=50_000, max_bytes=200 * 1024 * 1024)
_LIST_PAGE = 100
_EXPIRED_CODES = frozenset({"batch_expired", "batch_cancelled"})

_STATES: dict[str, JobState] = {
    "validating": "submitted",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "completed": "ended",
    "failed": "failed",
    "expired": "expired",
    "cancelling": "cancelling",
    "cancelled": "cancelled",
}


class _Line(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class _Counts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None
    line: int | None = None


class _Errors(msgspec.Struct):
    data: list[_Error] | None = None


class _Batch(msgspec.Struct):
    id: str
    status: str
    created_at: int | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: _Counts | None = None
    metadata: dict[str, str] | None = None
    errors: _Errors | None = None


class _Page(msgspec.Struct):
    data: list[_Batch]
    has_more: bool = False
    last_id: str | None = None


class _File(msgspec.Struct):
    id: str


class _Response(msgspec.Struct):
    status_code: int
    request_id: str | None = None
    body: msgspec.Raw = msgspec.Raw(b"null")


class _OutputLine(msgspec.Struct):
    custom_id: str
    id: str | None = None
    response: _Response | None = None
    error: _Error | None = None


class _InputLine(msgspec.Struct):
    custom_id: str


_encode = msgspec.json.Encoder().encode
_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_page = msgspec.json.Decoder(_Page).decode
_decode_file = msgspec.json.Decoder(_File).decode
_decode_output = msgspec.json.Decoder(_OutputLine).decode
_decode_input = msgspec.json.Decoder(_InputLine).decode


def job_of(batch: _Batch) -> BatchJob:
    """A batch object as the provider-neutral job."""
    state = _STATES.get(batch.status, "in_progress")
    counts = batch.request_counts or _Counts()
    errored = counts.failed
    if state in ("expired", "cancelled"):  # the requests that never ran count as errored
        errored = max(counts.total - counts.completed, counts.failed)
    created = None
    if batch.created_at is not None:
        created = datetime.fromtimestamp(batch.created_at, UTC)
    return BatchJob(
        id=batch.id,
        state=state,
        provider_state=batch.status,
        requests=counts.total,
        succeeded=counts.completed,
        errored=errored,
        created_at=created,
        job_key=(batch.metadata or {}).get(JOB_KEY),
    )


class OpenAIBatchClient:
    """`BatchClient` for OpenAI's Batch API (and any server speaking it, like the fake
    provider: pass its online adapter). Bodies are built and answers read by `adapter`."""

    provider: str
    limits: BatchLimits = LIMITS

    def __init__(
        self, adapter: OpenAICompatibleAdapter | None = None, *, limits: BatchLimits = LIMITS
    ) -> None:
        self.limits = limits
        self.adapter = adapter if adapter is not None else OpenAIAdapter()
        self.provider = self.adapter.name
        self._http = BatchHTTP(self.adapter)

    # -- the wire ---------------------------------------------------------------------------

    def encode_line(self, target: Target, item: BatchItem) -> bytes:
        try:
            body = self.adapter.build_body(target, item.request)
        except (ValueError, TypeError) as exc:  # text JSON cannot carry (a lone surrogate...)
            why = f"request {item.custom_id!r} cannot be encoded as JSON: {exc}"
            raise self.adapter.error(BadRequest, target, why) from None
        return _encode(_Line(item.custom_id, "POST", CHAT_URL, msgspec.Raw(body))) + b"\n"

    def _url(self, target: Target, path: str) -> URL:
        endpoint = self.adapter.endpoint_for(target)
        if not endpoint:
            raise self._http.refuse(target, "target has no endpoint")
        try:
            return URL(endpoint.rstrip("/") + path)
        except ValueError:
            raise self._http.refuse(target, "invalid endpoint URL") from None

    def _headers(self, target: Target) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if target.api_key is not None:
            headers["Authorization"] = "Bearer " + target.api_key.reveal()
        return headers

    async def _get(self, target: Target, path: str) -> bytes:
        return await self._http.call(
            target, "GET", self._url(target, path), headers=self._headers(target)
        )

    async def _post_json(self, target: Target, path: str, body: bytes) -> bytes:
        headers = self._headers(target) | {"Content-Type": "application/json"}
        return await self._http.call(
            target, "POST", self._url(target, path), headers=headers, body=body
        )

    def _batch(self, target: Target, payload: bytes) -> _Batch:
        try:
            return _decode_batch(payload)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise self._http.malformed(target, "batch object", exc) from exc

    # -- the job ----------------------------------------------------------------------------

    async def submit(self, target: Target, items: list[BatchItem], job_key: str) -> BatchJob:
        lines = [self.encode_line(target, item) for item in items]
        check_size(self._http, target, lines, self.limits)
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file", b"".join(lines), filename=f"{job_key}.jsonl", content_type="application/jsonl"
        )
        uploaded = await self._http.call(
            target, "POST", self._url(target, "/files"), headers=self._headers(target), body=form
        )
        try:
            file_id = _decode_file(uploaded).id
        except (msgspec.MsgspecError, ValueError) as exc:
            raise self._http.malformed(target, "file object", exc) from exc
        create = _encode(
            {
                "input_file_id": file_id,
                "endpoint": CHAT_URL,
                "completion_window": "24h",
                "metadata": {JOB_KEY: job_key},
            }
        )
        return job_of(self._batch(target, await self._post_json(target, "/batches", create)))

    async def get(self, target: Target, batch_id: str) -> BatchJob:
        return job_of(await self._read_batch(target, batch_id))

    async def _read_batch(self, target: Target, batch_id: str) -> _Batch:
        return self._batch(target, await self._get(target, f"/batches/{batch_id}"))

    async def cancel(self, target: Target, batch_id: str) -> BatchJob:
        payload = await self._post_json(target, f"/batches/{batch_id}/cancel", b"")
        return job_of(self._batch(target, payload))

    async def find(self, target: Target, job_key: str, since: datetime) -> BatchJob | None:
        """The newest batch whose metadata carries `job_key`, among those created at or after
        `since` (the list comes newest first, so paging stops at the first older one)."""
        after: str | None = None
        while True:
            path = f"/batches?limit={_LIST_PAGE}" + (f"&after={after}" if after else "")
            try:
                page = _decode_page(await self._get(target, path))
            except (msgspec.MsgspecError, ValueError) as exc:
                raise self._http.malformed(target, "batch list", exc) from exc
            for batch in page.data:
                job = job_of(batch)
                if job.created_at is not None and job.created_at < since:
                    return None
                if job.job_key == job_key:
                    return job
            if not page.has_more or not page.data:
                return None
            after = page.last_id or page.data[-1].id

    async def results(self, target: Target, batch_id: str) -> list[BatchResult]:
        batch = await self._read_batch(target, batch_id)
        state = _STATES.get(batch.status, "in_progress")
        if state not in FINAL_STATES:
            why = f"batch {batch_id} is {batch.status}: its results are not ready"
            raise self._http.refuse(target, why)
        found: dict[str, BatchResult] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                for line in jsonl(await self._get(target, f"/files/{file_id}/content")):
                    result = self._result(target, line)
                    found[result.custom_id] = result
        if state == "ended" or not batch.input_file_id:
            return list(found.values())
        # expired, cancelled, failed: the requests that have no line are named by the input
        failure = None if state != "failed" else self._validation_error(target, batch)
        for line in jsonl(await self._get(target, f"/files/{batch.input_file_id}/content")):
            try:
                custom_id = _decode_input(line).custom_id
            except (msgspec.MsgspecError, ValueError) as exc:
                raise self._http.malformed(target, "input file line", exc) from exc
            if custom_id not in found:
                found[custom_id] = BatchResult(
                    custom_id=custom_id, error=failure, expired=failure is None
                )
        return list(found.values())

    def _validation_error(self, target: Target, batch: _Batch) -> ProviderError:
        errors = (batch.errors.data if batch.errors else None) or []
        said = "; ".join(
            f"{e.message or e.code or 'error'}" + (f" (line {e.line})" if e.line else "")
            for e in errors[:5]
        )
        return self.adapter.error(
            BadRequest, target, f"the batch failed validation: {said or 'no reason given'}"
        )

    def _result(self, target: Target, line: bytes) -> BatchResult:
        """One line of the output or error file as the request's outcome."""
        try:
            out = _decode_output(line)
        except (msgspec.MsgspecError, ValueError) as exc:
            raise self._http.malformed(target, "results line", exc) from exc
        response = out.response
        if out.error is not None and (response is None or 200 <= response.status_code < 300):
            if out.error.code in _EXPIRED_CODES:
                return BatchResult(custom_id=out.custom_id, expired=True)
            why = out.error.message or out.error.code or "the request failed"
            if out.error.code:
                why = f"{why} ({out.error.code})"
            error = self.adapter.error(ServerError, target, why)
            return BatchResult(custom_id=out.custom_id, error=error)
        if response is None:
            why = "a results line with neither response nor error"
            return BatchResult(
                custom_id=out.custom_id, error=self.adapter.error(ServerError, target, why)
            )
        payload = bytes(response.body)
        if not 200 <= response.status_code < 300:
            error = self._http.answer_error(
                target, response.status_code, payload, response.request_id
            )
            return BatchResult(custom_id=out.custom_id, error=error)
        try:
            result: ProviderResult = self._http.answer(target, payload, response.request_id)
        except ProviderError as exc:
            return BatchResult(custom_id=out.custom_id, error=exc)
        return BatchResult(custom_id=out.custom_id, result=result)

    async def close(self) -> None:
        await self._http.close()
