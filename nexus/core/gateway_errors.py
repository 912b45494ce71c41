"""Errors of the router node, and their OpenAI-envelope rendering.

    GatewayError                 an answer the client gets instead of a completion
    ├── BadRequest        400    malformed JSON, missing or mistyped fields (param names the field)
    ├── Unauthorized      401    missing or unknown API key
    ├── NotFound          404    no such path
    ├── ModelNotFound     404    unknown model, or its fallbacks exhausted
    ├── MethodNotAllowed  405    wrong method for the path
    ├── PayloadTooLarge   413    body over server.max_body_bytes
    ├── UnsupportedMediaType 415 a body that is not declared application/json (stops cross-site form posts)
    ├── ClientDisconnected 499   the client left before its body arrived (nothing can be sent)
    ├── RateLimited       429    the key's or team's RPM/TPM is used up (Retry-After, x-ratelimit-* headers)
    ├── UpstreamRateLimited 429  every candidate answered 429 (Retry-After: the soonest cooldown's end)
    ├── UpstreamFailed    502    every candidate failed before the first byte
    ├── UpstreamTimeout   504    the last candidate timed out
    ├── Unavailable       503    a Reject or a queue timeout; carries the rejection context
    └── Overloaded        503    this replica is at server.max_concurrent_requests (Retry-After: 1)

    UpstreamError                one attempt against one backend failed (retried on the next candidate)

Every `GatewayError` renders as `{"error": {"message", "type", "param", "code"}}`, plus a sibling
`"context"` object for 503 rejections. Messages never contain secrets or upstream response bodies
beyond their status.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "BadRequest",
    "ClientDisconnected",
    "GatewayError",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "error_body",
]


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None, context: dict[str, Any] | None = None
) -> bytes:
    payload: dict[str, Any] = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    if context is not None:
        payload["context"] = context
    return orjson.dumps(payload)


class GatewayError(Exception):
    status = 500
    type_ = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        context: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.context = context
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type_, self.code, self.param, self.context)


class BadRequest(GatewayError):
    status = 400
    type_ = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(GatewayError):
    status = 401
    type_ = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type_ = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type_ = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type_ = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type_ = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type_ = "invalid_request_error"
    code = "unsupported_media_type"


class ClientDisconnected(GatewayError):
    status = 499  # nginx's "client closed request"; never reaches the client
    type_ = "invalid_request_error"
    code = "client_disconnected"


class UpstreamFailed(GatewayError):
    status = 502
    type_ = "upstream_error"
    code = "upstream_failed"


class UpstreamRateLimited(GatewayError):
    status = 429
    type_ = "rate_limit_error"
    code = "rate_limit_exceeded"


class RateLimited(GatewayError):
    """A tenant's own limit (nexus.router_node.rates); `type` says which, as OpenAI's do."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.type_ = "requests" if kind == "rpm" else "tokens"


class UpstreamTimeout(GatewayError):
    status = 504
    type_ = "upstream_error"
    code = "upstream_timeout"


class Unavailable(GatewayError):
    status = 503
    type_ = "service_unavailable"
    code = "no_viable_backend"


class Overloaded(GatewayError):
    status = 503
    type_ = "service_unavailable"
    code = "replica_overloaded"


class UpstreamError(Exception):
    """One attempt against one backend failed before the first byte reached the client."""

    def __init__(
        self,
        backend: str,
        message: str,
        *,
        status: int | None = None,
        timeout: bool = False,
        retry_after: float | None = None,
        invalid: bool = False,
    ) -> None:
        super().__init__(f"{backend}: {message}")
        self.invalid = invalid  # the backend answered, but not with what the API says (HTML, bad JSON, ...)
        self.backend = backend
        self.reason = message
        self.status = status
        self.timeout = timeout
        self.retry_after = retry_after  # seconds, from the backend's Retry-After header
