"""The OpenAPI document says what the middlewares do: which operations need a token, and their 401/403/413/503."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.auth import OPEN_PATHS, SAFE_METHODS
from service.schemas import ErrorRead

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorRead"}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    }
    if headers:
        response["headers"] = headers
    return response


def _errors_are_json(responses: dict[str, Any]) -> None:
    # FastAPI documents every response of a route in the route's own media type (text/html for the
    # report page, say), but an error is always JSON.
    for status, response in responses.items():
        content = response.get("content") or {}
        if status[:1] in ("4", "5") and content and "application/json" not in content:
            schema = next(iter(content.values())).get("schema")
            response["content"] = {"application/json": {"schema": schema} if schema else {}}


def document(schema: dict[str, Any], *, auth: bool, protect_reads: bool) -> dict[str, Any]:
    """Add security and the middlewares' error responses to every operation they apply to (in place)."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).setdefault(
        "ErrorRead", ErrorRead.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    if auth:
        components.setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "TUNEFLEET_API_TOKEN or a token of TUNEFLEET_API_TOKENS_FILE",
        }
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            _errors_are_json(responses)
            if "requestBody" in operation:
                responses.setdefault("400", _error("the body cannot be parsed as JSON text (invalid_json)"))
                responses.setdefault("413", _error("the body is over the size limit (payload_too_large)"))
            if path.startswith("/v1/"):
                responses.setdefault("503", _error("the study store is unreachable (store_unavailable)"))
            mutating = method.upper() not in SAFE_METHODS
            if auth and (mutating or (protect_reads and path not in OPEN_PATHS)):
                operation["security"] = [{"bearerAuth": []}]
                responses.setdefault(
                    "401",
                    _error(
                        "no token, or an unknown one (unauthorized)",
                        {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
                    ),
                )
                if mutating:
                    responses.setdefault("403", _error("the token is read-only (forbidden)"))
    return schema


def install_openapi(app: FastAPI, *, auth: bool, protect_reads: bool) -> None:
    """Serve the app's generated OpenAPI document with the middlewares' behaviour written into it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(generate(), auth=auth, protect_reads=protect_reads)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
