"""Gemini's Batch API: generateContent requests inline in one JSON body, answered within 24 h.

    submit    POST {base}/v1beta/models/{model}:batchGenerateContent
              {"batch": {"display_name", "input_config": {"requests": {"requests":
              [{"request": GenerateContentRequest, "metadata": {"key"}}]}}}}
    get       GET {base}/v1beta/batches/{id}
    cancel    POST {base}/v1beta/batches/{id}:cancel (an empty answer), then a get
    find      GET {base}/v1beta/batches?pageSize=100 (then &pageToken=nextPageToken)
    results   the get's `response.inlinedResponses.inlinedResponses`, once the batch is final

Documented in the guide https://ai.google.dev/gemini-api/docs/batch-api (formerly
/gemini-api/docs/batch-mode: the REST examples above, the states, the 20 MB inline limit) and
the reference https://ai.google.dev/api/batch-mode (the batch's fields, `batchStats`).

`base` is the row's endpoint without a trailing API version (the Batch API is `v1beta`
only); headers are the online adapter's (the key in `x-goog-api-key`, never in the URL).
Each entry's `request` is the body the online adapter would POST, and its `metadata.key` is
the item's `custom_id`. The responses come in the order of the requests (the reference's
`GenerateContentBatchOutput`), but their `metadata` is not always returned (reported on
discuss.ai.google.dev/t/112386): a response without it is given by its position
(`BatchResult.index`), which the lane matches to the job's requests in submission order.
Only inline requests are used (at most 20 MB per body); the file-based path (a JSONL file
uploaded through the File API, up to 2 GB) is not.

A create or get answers a long-running operation: `name` (`batches/...`, the job's id here),
`metadata` (the batch: `displayName`, `state`, `createTime`, `batchStats` with int64 counts
as strings) and, once done, `response.inlinedResponses.inlinedResponses[]`, each with
`metadata.key` and a `response` (a GenerateContentResponse, read by the online adapter's
parser) or an `error` (a google.rpc.Status: its gRPC code becomes the HTTP status a live call
would have had, then the online adapter classifies it). An entry whose error is `CANCELLED`
is `expired`, as a request that never ran. The SDKs read the same entries from
`metadata.output`; both places are read. A request with no entry (an expired or cancelled
job) has no result here: the lane answers it as expired.

States, spelt `BATCH_STATE_*` on the wire and `JOB_STATE_*` in the guide (both taken):
PENDING → submitted, RUNNING → in_progress, SUCCEEDED → ended, FAILED → failed, CANCELLED →
cancelled, EXPIRED → expired (a batch pending or running for more than 48 hours), and the
SDKs' CANCELLING → cancelling; another is in_progress.

Limits: 20,000,000 bytes (the guide's "20MB", read as the smaller unit) and 10,000 requests:
the docs give no count for a batch; a count that keeps a job to what 20 MB holds of short
prompts (2 KB each), so a job is never refused for its count alone.

Finding a job by its key: the key is the batch's `display_name`, which Google keeps. `find`
pages through the whole list (its order is not documented) for a batch of that name created
at or after `since`.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec
from yarl import URL

from ._batch_http import BatchHTTP, check_size
from .base import Target
from .batch import FINAL_STATES, BatchItem, BatchJob, BatchLimits, BatchResult, JobState
from .errors import BadRequest, ProviderError
from .gemini import GeminiAdapter

__all__ = ["LIMITS", "GeminiBatchClient"]

LIMITS = BatchLimits(max_requests=10_000, max_bytes=20_000_000)
_LIST_PAGE = 100
_VERSIONS = ("/v1beta", "/v1", "/v1alpha")
_BATCH_ID = re.compile(r"^(batches/)?([a-zA-Z0-9_-]{1,128})$")

_STATES: dict[str, JobState] = {
    "PENDING": "submitted",
    "QUEUED": "submitted",
    "RUNNING": "in_progress",
    "SUCCEEDED": "ended",
    "FAILED": "failed",
    "CANCELLING": "cancelling",
    "CANCELLED": "cancelled",
    "EXPIRED": "expired",
}

_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
"""google.rpc.Code by name → the HTTP status Google's REST front end answers it with."""

_CODE_NAMES = tuple(_HTTP_STATUS)  # google.rpc.Code numbers 0..16, in order


def state_of(provider_state: str) -> JobState:
    """The neutral state of `BATCH_STATE_X` or `JOB_STATE_X`."""
    for prefix in ("BATCH_STATE_", "JOB_STATE_"):
        if provider_state.startswith(prefix):
            return _STATES.get(provider_state[len(prefix) :], "in_progress")
    return "in_progress"


class _Key(msgspec.Struct):
    key: str


class _Entry(msgspec.Struct):
    request: msgspec.Raw
    metadata: _Key


class _Stats(msgspec.Struct, rename="camel"):
    request_count: int | str = 0
    successful_request_count: int | str = 0
    failed_request_count: int | str = 0
    pending_request_count: int | str = 0


_NULL = msgspec.Raw(b"null")  # a Raw field's absence (msgspec has no optional Raw)


class _Status(msgspec.Struct):
    code: int | str | None = None
    message: str | None = None
    status: str | None = None
    details: msgspec.Raw = _NULL


class _Inlined(msgspec.Struct):
    response: msgspec.Raw = _NULL
    error: _Status | None = None
    metadata: _Key | None = None


class _InlinedList(msgspec.Struct, rename="camel"):
    inlined_responses: list[_Inlined] = []


class _Output(msgspec.Struct, rename="camel"):
    inlined_responses: _InlinedList | None = None
    responses_file: str | None = None


class _Batch(msgspec.Struct, rename="camel"):
    display_name: str | None = None
    state: str = "BATCH_STATE_UNSPECIFIED"
    create_time: str | None = None
    batch_stats: _Stats | None = None
    output: _Output | None = None


class _Operation(msgspec.Struct):
    name: str
    metadata: _Batch | None = None
    done: bool = False
    response: _Output | None = None


class _Page(msgspec.Struct, rename="camel"):
    operations: list[_Operation] = []
    next_page_token: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_operation = msgspec.json.Decoder(_Operation).decode
_decode_page = msgspec.json.Decoder(_Page).decode


def _count(value: int | str) -> int:
    try:
        return max(int(value), 0)
    except ValueError:
        return 0


def _created(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def job_of(op: _Operation) -> BatchJob:
    """A batch operation as the provider-neutral job."""
    batch = op.metadata or _Batch()
    state = state_of(batch.state)
    stats = batch.batch_stats or _Stats()
    errored = _count(stats.failed_request_count)
    if state in ("expired", "cancelled"):  # the requests that never ran count as errored
        errored += _count(stats.pending_request_count)
    return BatchJob(
        id=op.name,
        state=state,
        provider_state=batch.state,
        requests=_count(stats.request_count),
        succeeded=_count(stats.successful_request_count),
        errored=errored,
        created_at=_created(batch.create_time),
        job_key=batch.display_name,
    )


def error_status(error: _Status) -> tuple[int, str]:
    """The HTTP status and code name of a per-request google.rpc.Status."""
    code = error.code
    if isinstance(code, int) and 0 <= code < len(_CODE_NAMES):
        name = _CODE_NAMES[code]
    elif isinstance(code, str) and code in _HTTP_STATUS:
        name = code
    else:
        name = error.status if error.status in _HTTP_STATUS else "UNKNOWN"
    assert name is not None
    return _HTTP_STATUS[name], name


class GeminiBatchClient:
    """`BatchClient` for Gemini's Batch API; bodies built and answers read by the online
    `GeminiAdapter`."""

    provider = "gemini"
    limits: BatchLimits = LIMITS

    def __init__(
        self, adapter: GeminiAdapter | None = None, *, limits: BatchLimits = LIMITS
    ) -> None:
        self.limits = limits
        self.adapter = adapter if adapter is not None else GeminiAdapter()
        self._http = BatchHTTP(self.adapter)

    # -- the wire ---------------------------------------------------------------------------

    def encode_line(self, target: Target, item: BatchItem) -> bytes:
        """The request's entry in the body's `requests` (a comma joins it to the next)."""
        try:
            body = self.adapter.build_body(target, item.request)
        except (ValueError, TypeError) as exc:
            why = f"request {item.custom_id!r} cannot be encoded as JSON: {exc}"
            raise self.adapter.error(BadRequest, target, why) from None
        return _encode(_Entry(msgspec.Raw(body), _Key(item.custom_id)))

    def _base(self, target: Target) -> str:
        endpoint = self.adapter.endpoint_for(target).rstrip("/")
        if not endpoint:
            raise self._http.refuse(target, "target has no endpoint")
        for version in _VERSIONS:
            if endpoint.endswith(version):
                return endpoint[: -len(version)] + "/v1beta"
        return endpoint + "/v1beta"

    def _url(self, target: Target, path: str) -> URL:
        try:
            return URL(self._base(target) + path)
        except ValueError:
            raise self._http.refuse(target, "invalid endpoint URL") from None

    def _batch_url(self, target: Target, batch_id: str, suffix: str = "") -> URL:
        match = _BATCH_ID.match(batch_id)
        if match is None:
            raise self._http.refuse(target, f"{batch_id!r} is not a batch name (batches/...)")
        return self._url(target, f"/batches/{match.group(2)}{suffix}")

    def _operation(self, target: Target, payload: bytes) -> _Operation:
        return self._http.decoded(target, _decode_operation, payload, "batch operation")

    # -- the job ----------------------------------------------------------------------------

    async def submit(self, target: Target, items: list[BatchItem], job_key: str) -> BatchJob:
        """Create the batch, `job_key` as its `display_name`."""
        entries = [self.encode_line(target, item) for item in items]
        check_size(self._http, target, entries, self.limits)
        head = _encode({"display_name": job_key})[:-1]  # {"display_name":"..."
        body = (
            b'{"batch":'
            + head
            + b',"input_config":{"requests":{"requests":['
            + b",".join(entries)
            + b"]}}}}"
        )
        model = target.model.removeprefix("models/")
        try:
            url = URL(self._base(target)) / "models" / f"{model}:batchGenerateContent"
        except ValueError:
            raise self._http.refuse(target, "invalid endpoint URL") from None
        return job_of(self._operation(target, await self._http.send(target, "POST", url, body)))

    async def get(self, target: Target, batch_id: str) -> BatchJob:
        return job_of(await self._read(target, batch_id))

    async def _read(self, target: Target, batch_id: str) -> _Operation:
        url = self._batch_url(target, batch_id)
        return self._operation(target, await self._http.send(target, "GET", url))

    async def cancel(self, target: Target, batch_id: str) -> BatchJob:
        """Ask for the cancel (Google answers nothing), then read the batch."""
        await self._http.send(target, "POST", self._batch_url(target, batch_id, ":cancel"), b"")
        return await self.get(target, batch_id)

    async def find(self, target: Target, job_key: str, since: datetime) -> BatchJob | None:
        """The batch named `job_key` created at or after `since` (one with no create time
        counts); None when the list has none."""
        token: str | None = None
        while True:
            url = self._url(target, "/batches").with_query(
                {"pageSize": _LIST_PAGE, **({"pageToken": token} if token else {})}
            )
            payload = await self._http.send(target, "GET", url)
            page = self._http.decoded(target, _decode_page, payload, "batch list")
            for op in page.operations:
                job = job_of(op)
                if job.job_key != job_key:
                    continue
                if job.created_at is None or job.created_at >= since:
                    return job
            if not page.next_page_token or not page.operations:
                return None
            token = page.next_page_token

    async def results(self, target: Target, batch_id: str) -> list[BatchResult]:
        op = await self._read(target, batch_id)
        job = job_of(op)
        if job.state not in FINAL_STATES:
            why = f"batch {batch_id} is {job.provider_state}: its results are not ready"
            raise self._http.refuse(target, why)
        output = op.response or (op.metadata.output if op.metadata else None)
        if output is None:
            return []  # failed, expired or cancelled before any request ran
        if output.inlined_responses is None and output.responses_file:
            why = f"its results are in a file ({output.responses_file}) this client does not read"
            raise self._http.malformed(target, "batch output", ValueError(why))
        entries = output.inlined_responses.inlined_responses if output.inlined_responses else []
        return [self._result(target, entry, i) for i, entry in enumerate(entries)]

    def _result(self, target: Target, entry: _Inlined, index: int) -> BatchResult:
        """One inline response. The responses come in the order of the requests; their
        `metadata.key` is not always returned, so each carries its position too."""
        custom_id = entry.metadata.key if entry.metadata is not None else ""
        if entry.error is not None:
            status, name = error_status(entry.error)
            if name == "CANCELLED":
                return BatchResult(custom_id=custom_id, expired=True, index=index)
            error = entry.error
            payload = _encode(
                {
                    "error": {
                        "code": status,
                        "message": error.message or name,
                        "status": error.status or name,
                        "details": msgspec.Raw(bytes(error.details))
                        if bytes(error.details) != b"null"
                        else [],
                    }
                }
            )
            found = self._http.answer_error(target, status, payload, None)
            return BatchResult(custom_id=custom_id, error=found, index=index)
        try:
            answer = self._http.answer(target, bytes(entry.response), None)
        except ProviderError as exc:
            return BatchResult(custom_id=custom_id, error=exc, index=index)
        return BatchResult(custom_id=custom_id, result=answer, index=index)

    async def close(self) -> None:
        await self._http.close()
