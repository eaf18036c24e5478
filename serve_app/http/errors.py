"""The one table from domain errors to HTTP statuses, and the shapes errors take on the wire.

REST answers `{"error": message}` with the table's status (validation errors add the failing
fields). The Open Inference Protocol answers every client error as 400 `{"error": message}` and
keeps 5xx as they are. A 429 or 503 carries `Retry-After`: the refusing breaker's wait, else 1 s."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtimes.schema import input_schema

from ..access import route_path
from ..errors import BadRequest, Conflict, ModelUnavailable, NotFoundError, RateLimited, ServingError
from ..v2 import V2Error

STATUS: dict[type[Exception], int] = {
    BadRequest: 422,
    V2Error: 400,
    NotFoundError: 404,
    Conflict: 409,
    RateLimited: 429,
    ModelUnavailable: 503,  # Overloaded and BreakerOpen among them
}


def status_of(error: BaseException) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def is_v2(request: Request) -> bool:
    return route_path(request.scope).startswith("/v2")


def encodable(text: str) -> str:
    """`text` as a JSON answer can carry it: a lone surrogate a client sent (JSON's "\\ud800") has no
    UTF-8, so it is answered escaped rather than failing the response."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, headers: dict | None = None, v2: bool = False) -> JSONResponse:
    if v2 and 400 <= status < 500 and status != 429:  # a rate limit is a 429 on every protocol
        status = 400
    return JSONResponse({"error": encodable(message)}, status_code=status, headers=headers)


def domain_error_response(error: ServingError | V2Error, v2: bool = False) -> JSONResponse:
    status = status_of(error)
    headers = {"Retry-After": str(getattr(error, "retry_after_s", 1))} if status in (429, 503) else None
    return error_response(status, getattr(error, "message", str(error)), headers, v2)


def _location(loc) -> str:
    """('body', 'features', 'list[...]', 2) -> 'features[2]': pydantic's union branch tags dropped."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"{parts.pop() if parts else ''}[{part}]")
        elif part != "body" and "[" not in part and "(" not in part:
            parts.append(part)
    return ".".join(parts) or "body"


_BRANCH_MISMATCH = ("Input should be a valid dictionary", "Input should be a valid list")


def first_problem(errors: list[dict]) -> str:
    errors = errors or [{"loc": (), "msg": "invalid request"}]
    specific = [e for e in errors if not str(e.get("msg", "")).startswith(_BRANCH_MISMATCH)] or errors
    error = specific[0]
    if error.get("type") == "json_invalid":
        return f"body: not valid JSON (at character {error.get('loc', ('', '?'))[-1]})"
    location, message = _location(error.get("loc", ())), str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if location == "body" and message.split(" ", 1)[0].endswith(":"):  # a whole-request check names its field
        return message
    return f"{location}: {message}"


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    return domain_error_response(error, is_v2(request))


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    status, message = error.status_code, str(error.detail)
    if status == 400 and "parsing the body" in message:  # malformed JSON or bytes that are not UTF-8
        status, message = 422, "body: not valid JSON (RFC 8259, UTF-8)"
    return error_response(status, message, getattr(error, "headers", None), is_v2(request))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    message = first_problem(error.errors())
    if is_v2(request):
        return error_response(400, message)
    detail = [{"field": encodable(_location(e.get("loc", ()))), "msg": encodable(str(e.get("msg", "")))}
              for e in error.errors()]
    return JSONResponse({"error": encodable(message), "detail": detail[:10],
                         "expected_features": input_schema()["feature_names"]}, status_code=422)


async def _fault(request: Request, error: Exception) -> JSONResponse:
    """A fault of the service's own: JSON like every other error, nothing of its text (it is logged)."""
    return error_response(500, "internal error: the fault is logged; retrying will not help")


def install(app: FastAPI) -> None:
    app.add_exception_handler(Exception, _fault)
    app.add_exception_handler(ServingError, _domain_error)
    app.add_exception_handler(V2Error, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
