"""Every error leaves the server in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import (
    AdapterError,
    AdapterNotFoundError,
    CheckpointError,
    EngineClosedError,
    InvalidRequestError,
    QueueFullError,
)
from storyloom.studio import NotReadyError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.\[\]]*): ")


class ApiError(Exception):
    """An HTTP error with OpenAI's error body; raise it anywhere in a route."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def field_error(exc: ValueError) -> ApiError:
    """A 400 for a ValueError worded "field: reason" (SamplingParams, RenderParams, StoryOptions)."""
    message = str(exc)
    match = _FIELD_PREFIX.match(message)
    return ApiError(400, message, param=match.group(1) if match else None)


def unknown_model(name: str, known: list[str]) -> ApiError:
    return ApiError(
        404,
        f"The model '{name}' does not exist; known models: {', '.join(known) or '(none)'}",
        param="model",
        code="model_not_found",
    )


def queue_full(message: str) -> ApiError:
    return ApiError(
        429, message, type="rate_limit_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def to_api_error(exc: Exception) -> ApiError:
    """The HTTP form of an engine or library error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AdapterNotFoundError):
        return ApiError(404, str(exc), code="model_not_found")
    if isinstance(exc, QueueFullError):
        return queue_full(str(exc))
    if isinstance(exc, NotReadyError):
        return ApiError(503, str(exc), type="server_error", code="not_ready")
    if isinstance(exc, EngineClosedError):
        return ApiError(503, str(exc), type="server_error", code="engine_closed")
    if isinstance(exc, InvalidRequestError | AdapterError | CheckpointError):
        return field_error(exc) if isinstance(exc, ValueError) else ApiError(400, str(exc))
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")


def _validation_error(exc: RequestValidationError) -> ApiError:
    problems = []
    first_param = None
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            problems.append(f"the request body is not valid JSON ({error.get('msg', '')})")
            continue
        param = ".".join(loc) or None
        first_param = first_param or param
        reason = error.get("ctx", {}).get("error") if error.get("type") == "value_error" else None
        problems.append(f"{param or 'body'}: {reason or error.get('msg', 'invalid value')}")
    return ApiError(400, "; ".join(problems) or "invalid request", param=first_param)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> JSONResponse:
        return to_api_error(exc).response()

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc).response()

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return ApiError(exc.status_code, message, code=code, headers=exc.headers).response()

    async def on_unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the API server")
        return to_api_error(exc).response()

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    handled = (
        ApiError,
        InvalidRequestError,
        QueueFullError,
        EngineClosedError,
        NotReadyError,
        AdapterError,
        CheckpointError,
    )
    for exc_type in handled:
        app.add_exception_handler(exc_type, on_api_error)
    app.add_exception_handler(Exception, on_unexpected)
