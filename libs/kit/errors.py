"""One error model for every service: ``{"error": "<dotted.code>", "detail": "..."}`` with the right status.

Domain code raises :class:`MaillageError` subclasses (or returns them); the handlers installed by
:func:`install_error_handlers` render them, FastAPI's validation errors, unknown routes and unexpected exceptions in
the same shape. Unexpected exceptions never leak a stack trace: they answer ``internal`` with the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "BadRequest",
    "Conflict",
    "ErrorBody",
    "Forbidden",
    "MaillageError",
    "NotFound",
    "PreconditionFailed",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "Unprocessable",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str
    detail: str
    fields: list[dict[str, Any]] | None = None
    request_id: str | None = None


class MaillageError(Exception):
    """An error with a machine-readable dotted code, a human detail and an HTTP status."""

    status_code: int = 400
    code: str = "request.bad"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class BadRequest(MaillageError):
    status_code = 400
    code = "request.bad"


class Unauthorized(MaillageError):
    status_code = 401
    code = "auth.unauthenticated"


class Forbidden(MaillageError):
    status_code = 403
    code = "auth.forbidden"


class NotFound(MaillageError):
    status_code = 404
    code = "resource.not_found"


class Conflict(MaillageError):
    status_code = 409
    code = "resource.conflict"


class PreconditionFailed(MaillageError):
    status_code = 412
    code = "request.precondition_failed"


class Unprocessable(MaillageError):
    status_code = 422
    code = "request.invalid"


class TooManyRequests(MaillageError):
    status_code = 429
    code = "quota.exceeded"


class ServiceUnavailable(MaillageError):
    status_code = 503
    code = "service.unavailable"


_STATUS_CODES = {
    400: "request.bad",
    401: "auth.unauthenticated",
    403: "auth.forbidden",
    404: "http.not_found",
    405: "http.method_not_allowed",
    406: "http.not_acceptable",
    412: "request.precondition_failed",
    413: "request.too_large",
    415: "request.unsupported_media_type",
    429: "quota.exceeded",
}


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return value if isinstance(value, str) else None


def _validation_fields(exc: RequestValidationError) -> list[dict[str, Any]]:
    fields = []
    for err in exc.errors():
        # Never echo the offending input back: it may be personal data or a secret.
        fields.append(
            {"loc": [str(part) for part in err.get("loc", ())], "type": err.get("type"), "msg": err.get("msg")}
        )
    return fields


def _answer(
    request: Request, status_code: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    if rid := _request_id(request):
        body["request_id"] = rid
    return JSONResponse(body, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` as :class:`ErrorBody`."""

    @app.exception_handler(MaillageError)
    async def _maillage(request: Request, exc: MaillageError) -> JSONResponse:
        return _answer(request, exc.status_code, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = _validation_fields(exc)
        if any(f["type"] == "json_invalid" for f in fields):
            code, detail = "request.malformed_json", "the body is not valid JSON (or not UTF-8)"
        else:
            first = fields[0] if fields else {"loc": [], "msg": "invalid request"}
            code, detail = "request.invalid", f"{'.'.join(first['loc'])}: {first['msg']}"
        return _answer(request, 422, {"error": code, "detail": detail, "fields": fields})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, f"http.{exc.status_code}")
        detail = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            code, detail = "request.malformed_body", "the body could not be decoded (it must be UTF-8 JSON)"
        return _answer(request, exc.status_code, {"error": code, "detail": detail}, getattr(exc, "headers", None))

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        # Two requests raced for the same unique row; the loser's transaction was rolled back whole.
        return _answer(request, 409, {"error": "resource.conflict", "detail": "a concurrent change won; retry"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.url.path,
            _request_id(request),
            exc_info=exc,
        )
        return _answer(request, 500, {"error": "internal", "detail": "internal error; quote the request id"})
