"""One error taxonomy for every provider.

    ProviderError                      root; carries provider, model, status, request_id
    ├── RetryableError                 worth another try (same endpoint or the fallback)
    │   ├── RateLimited                429 (Retry-After honoured)
    │   ├── Overloaded                 529 / "overloaded"
    │   ├── ServerError                5xx, 408, 409, a 2xx whose body does not parse
    │   ├── ResponseTooLarge           an answer over the byte cap (its body is not read)
    │   ├── ProviderTimeout            connect or total timeout
    │   └── ConnectionFailed           refused, reset, DNS, a body cut short
    └── TerminalError                  another try gives the same answer
        ├── BadRequest                 400 / 422
        │   ├── ContextLengthExceeded
        │   └── ContentFiltered
        ├── AuthError                  401 / 403, missing secret
        └── NotFound                   404 (unknown model or path)

`str(error)` is safe to publish: it never contains an API key.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BadRequest",
    "ConnectionFailed",
    "ContentFiltered",
    "ContextLengthExceeded",
    "InvalidOutput",
    "NotFound",
    "Overloaded",
    "ProviderError",
    "ProviderTimeout",
    "RateLimited",
    "ResponseTooLarge",
    "RetryableError",
    "ServerError",
    "TerminalError",
    "UnsupportedFeature",
    "error_for_status",
]


class ProviderError(Exception):
    retryable = False
    type = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        model: str = "",
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        where = "/".join(p for p in (self.provider, self.model) if p)
        if where:
            parts.append(f"[{where}]")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class RetryableError(ProviderError):
    retryable = True
    type = "retryable_error"


class RateLimited(RetryableError):
    type = "rate_limited"


class Overloaded(RetryableError):
    type = "overloaded"


class ServerError(RetryableError):
    type = "server_error"


class ResponseTooLarge(RetryableError):
    """An answer longer than the cap: maybe a glitch, maybe this prompt on this model, so it is
    retried and then handed to the fallback like any provider failure."""

    type = "response_too_large"


class ProviderTimeout(RetryableError):
    type = "timeout"


class ConnectionFailed(RetryableError):
    type = "connection_error"


class TerminalError(ProviderError):
    type = "terminal_error"


class BadRequest(TerminalError):
    type = "bad_request"


class ContextLengthExceeded(BadRequest):
    type = "context_length_exceeded"


class ContentFiltered(BadRequest):
    type = "content_filtered"


class UnsupportedFeature(BadRequest):
    """The prompt asks for a field (tools, a JSON schema, images, ...) that the provider of
    every candidate cannot honour; decided before any call."""

    type = "unsupported_feature"


class InvalidOutput(TerminalError):
    """The answer does not satisfy what the prompt asked (`response_format`, a tool's
    `parameters`), after `LLM_WORKER_OUTPUT_RETRIES` more tries; `raw` is its text."""

    type = "invalid_output"

    def __init__(self, message: str, *, raw: str, provider: str = "", model: str = "") -> None:
        super().__init__(message, provider=provider, model=model)
        self.raw = raw


class AuthError(TerminalError):
    type = "auth_error"


class NotFound(TerminalError):
    type = "not_found"


def error_for_status(status: int) -> type[ProviderError]:
    """The class for an HTTP status code (before any body-specific refinement)."""
    if status == 429:
        return RateLimited
    if status == 529:
        return Overloaded
    if status in (408, 409) or status >= 500:
        return ServerError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    return BadRequest
