"""Google's Gemini API (generativelanguage.googleapis.com) over aiohttp.

One call is one attempt: `POST {endpoint}/v1beta/models/{model}:generateContent`, the endpoint
defaulting to `https://generativelanguage.googleapis.com` (one that already ends in an API
version such as `/v1beta` or `/v1` keeps it; a `models/` prefix on the model is dropped), with
the key in `x-goog-api-key` (never in the URL).

Messages become `contents` with roles "user" and "model" (assistant); system messages go to
`systemInstruction`. Images are `inlineData` (a `data:` URL) or `fileData` (an https URL, which
Google fetches itself). An assistant turn's tool calls are `functionCall` parts; tool turns are
`functionResponse` parts of a "user" turn (consecutive ones merged), named after the call they
answer. The structured fields (`gemini_wire` has the details):

    response_format   generationConfig.responseMimeType "application/json", and for a schema
                      `responseJsonSchema` (JSON Schema: what we are given, not the OpenAPI
                      subset `responseSchema` takes); keywords Gemini does not take are refused
    tools             tools[].functionDeclarations[] with `parametersJsonSchema` (same check)
    tool_choice       toolConfig.functionCallingConfig: AUTO, NONE, ANY (+allowedFunctionNames)
    reasoning_effort  generationConfig.thinkingConfig.thinkingBudget 1024 / 8192 / 24576

The answer is the first candidate's text parts (thought parts skipped) and its `functionCall`
parts (ids `call_0`, `call_1`... unless Google gave one). `STOP` → "stop" ("tool_calls" when it
called a function), `MAX_TOKENS` → "length", a safety-type finish → "content_filter" when the
answer has something in it, else (like a blocked prompt, `promptFeedback.blockReason`) it
raises `ContentFiltered`. Usage: `promptTokenCount` (it includes `cachedContentTokenCount`);
output is `candidatesTokenCount` plus `thoughtsTokenCount`, which Google counts apart (its
`totalTokenCount` is their sum with the prompt). Errors are Google's
`{"error": {"code", "message", "status", "details"}}`: `RESOURCE_EXHAUSTED` is `RateLimited`
(its `RetryInfo.retryDelay` is the retry hint), an invalid key (a 400 from Google) `AuthError`.

Streaming (`stream`) posts the same body, with the same key header, to
`.../models/{model}:streamGenerateContent?alt=sse`: server-sent events, each one a
`GenerateContentResponse` holding the next piece, read by `gemini_stream.GeminiAssembler`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from yarl import URL

from ._http import (
    CONTEXT_HINTS,
    ErrorBody,
    HTTPAdapter,
    Malformed,
    cap_tokens,
    decode_json,
    json_error,
    shorten,
)
from .base import ProviderRequest, ProviderResult, Target, ToolCall
from .errors import AuthError, BadRequest, ContentFiltered, ProviderError, RateLimited
from .features import IMAGES, JSON_OBJECT, JSON_SCHEMA, REASONING, TOOLS
from .gemini_stream import GeminiAssembler
from .gemini_wire import (
    GenerateBody,
    GenerationConfig,
    answer_finish,
    build_contents,
    clean_schema,
    decode_response,
    image_problem,
    schema_problem,
    thinking_for,
    tool_config_for,
    tools_for,
)

__all__ = ["DEFAULT_GEMINI_ENDPOINT", "GeminiAdapter"]

DEFAULT_GEMINI_ENDPOINT = "https://generativelanguage.googleapis.com"

_VERSIONS = ("/v1beta", "/v1", "/v1alpha")
_BAD_KEY_HINTS = ("api_key_invalid", "api key not valid", "api key expired")
_JSON = "application/json"

_encode = msgspec.json.Encoder().encode
_EMPTY_CONFIG = GenerationConfig()


@lru_cache(maxsize=1024)
def _generate_url(endpoint: str, model: str, method: str = "generateContent") -> URL:
    base = endpoint.rstrip("/")
    if not base.endswith(_VERSIONS):
        base += "/v1beta"
    model = model.removeprefix("models/")
    return URL(base) / "models" / f"{model}:{method}"


@lru_cache(maxsize=1024)
def _stream_url(endpoint: str, model: str) -> URL:
    """The same model's `:streamGenerateContent?alt=sse` (server-sent events: without `alt=sse`
    Google streams one JSON array)."""
    return _generate_url(endpoint, model, "streamGenerateContent").with_query(alt="sse")


def _seconds(duration: Any) -> float | None:
    """A protobuf JSON duration ("37s", "1.5s") in seconds."""
    if not isinstance(duration, str) or not duration.endswith("s"):
        return None
    try:
        value = float(duration[:-1])
    except ValueError:
        return None
    return value if value >= 0 else None


class GeminiAdapter(HTTPAdapter):
    """Adapter `gemini`: the Gemini API unless the target names another endpoint."""

    name = "gemini"
    default_endpoint: ClassVar[str] = DEFAULT_GEMINI_ENDPOINT
    features: ClassVar[frozenset[str]] = frozenset(
        {JSON_OBJECT, JSON_SCHEMA, TOOLS, IMAGES, REASONING}
    )
    context_hints: ClassVar[tuple[str, ...]] = (
        *CONTEXT_HINTS,
        "exceeds the maximum number of tokens",
    )

    def url_for(self, endpoint: str, target: Target) -> URL:
        return _generate_url(endpoint, target.model)

    def stream_url_for(self, endpoint: str, target: Target) -> URL:
        return _stream_url(endpoint, target.model)

    def assembler(self, target: Target, request: ProviderRequest) -> GeminiAssembler:
        """The stream's reader (`gemini_stream`); the streaming body is the plain one."""
        return GeminiAssembler(target, lambda why, rid: self._filtered(target, why, rid))

    def headers_for(self, target: Target) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if target.api_key is not None:
            headers["x-goog-api-key"] = target.api_key.reveal()
        return headers

    def unsupported(self, target: Target, request: ProviderRequest) -> str | None:
        """The common feature check, then what Gemini's wire cannot say: a JSON Schema keyword
        outside the subset it takes (response schema, tool parameters), an image URL that is
        neither base64 `data:` nor https."""
        why = super().unsupported(target, request)
        if why is not None:
            return why
        where = f"is not supported by provider {self.name} (model {target.model})"
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.schema is not None:
            keyword = schema_problem(fmt.schema)
            if keyword is not None:
                return f"`response_format` schema keyword `{keyword}` {where}"
        for tool in request.tools or ():
            keyword = schema_problem(tool.parameters)
            if keyword is not None:
                return f"`tools` parameters keyword `{keyword}` (tool `{tool.name}`) {where}"
        for message in request.messages or ():
            for image in message.images:
                problem = image_problem(image.url)
                if problem is not None:
                    return f"`image_url` {problem} {where}"
        return None

    def build_body(self, target: Target, request: ProviderRequest) -> bytes:
        try:
            system, contents = build_contents(self.messages(target, request))
        except LookupError as exc:  # a tool turn answering no call made before it
            raise self.error(BadRequest, target, str(exc.args[0])) from None
        if not contents:
            raise self.error(BadRequest, target, "request has no user or assistant message")
        fmt = request.response_format
        wants_json = fmt is not None and fmt.wants_json
        config = GenerationConfig(
            max_output_tokens=cap_tokens(request.max_tokens, target.max_tokens),
            temperature=request.temperature,
            top_p=request.top_p,
            stop_sequences=request.stop,
            seed=request.seed,
            response_mime_type=_JSON if wants_json else None,
            response_json_schema=clean_schema(fmt.schema)
            if fmt is not None and wants_json
            else None,
            thinking_config=thinking_for(request.reasoning_effort),
        )
        return _encode(
            GenerateBody(
                contents=tuple(contents),
                system_instruction=system,
                generation_config=None if config == _EMPTY_CONFIG else config,
                tools=tools_for(request.tools),
                tool_config=tool_config_for(request.tool_choice),
            )
        )

    def parse_result(
        self, target: Target, payload: bytes, request_id: str | None, headers: Mapping[str, str]
    ) -> ProviderResult:
        answer = decode_response(payload)
        request_id = request_id or answer.response_id
        feedback = answer.prompt_feedback
        if feedback is not None and feedback.block_reason:
            raise self._filtered(target, f"prompt blocked ({feedback.block_reason})", request_id)
        if not answer.candidates:
            raise Malformed("no candidates")
        candidate = answer.candidates[0]
        content = candidate.content
        parts = content.parts if content is not None else []
        text = "".join(p.text for p in parts if p.text and not p.thought)
        calls = tuple(
            ToolCall(call.id or f"call_{n}", call.name, call.arguments, call.unparsed)
            for n, call in enumerate(p.function_call for p in parts if p.function_call)
        )
        reason = candidate.finish_reason
        finish = answer_finish(reason, bool(calls))
        if finish == "content_filter" and not text and not calls:
            raise self._filtered(target, f"answer blocked ({reason})", request_id)
        usage = answer.usage_metadata
        return ProviderResult(
            text=text,
            finish_reason=finish,
            input_tokens=usage.input_tokens if usage is not None else 0,
            output_tokens=usage.output_tokens if usage is not None else 0,
            request_id=request_id,
            response_id=answer.response_id,
            response_model=answer.model_version if isinstance(answer.model_version, str) else None,
            tool_calls=calls,
            cached_input_tokens=usage.cached_content_token_count if usage is not None else 0,
            reasoning_tokens=usage.thoughts_token_count if usage is not None else 0,
        )

    def _filtered(self, target: Target, why: str, request_id: str | None) -> ProviderError:
        return self.error(ContentFiltered, target, why, status=200, request_id=request_id)

    def read_error(self, payload: bytes) -> ErrorBody:
        doc = decode_json(payload)
        if isinstance(doc, list) and doc and isinstance(doc[0], dict):
            doc = doc[0]  # some Google front ends wrap the error in a list
        err = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(err, dict) or not isinstance(err.get("message"), str):
            return json_error(payload)
        message: str = err["message"]
        status = err.get("status")
        kind = status if isinstance(status, str) else ""
        reasons: list[str] = []
        retry_after = None
        details = err.get("details")
        for detail in details if isinstance(details, list) else ():
            if not isinstance(detail, dict):
                continue
            if isinstance(detail.get("reason"), str):
                reasons.append(detail["reason"])
            if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                retry_after = _seconds(detail.get("retryDelay"))
        text = shorten(message)
        if kind:
            text = f"{text} ({kind})" if text else kind
        classify_on = " ".join([message, kind, *reasons]).lower()
        return ErrorBody(text, classify_on, kind=kind, retry_after=retry_after)

    def error_class(self, status: int, info: ErrorBody) -> type[ProviderError]:
        if info.kind == "RESOURCE_EXHAUSTED":
            return RateLimited
        if status in (400, 401, 403) and any(h in info.classify_on for h in _BAD_KEY_HINTS):
            return AuthError
        return super().error_class(status, info)
