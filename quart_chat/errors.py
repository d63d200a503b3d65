"""One error type with a code string, turned into JSON by one handler."""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, jsonify


class APIError(Exception):
    """An expected failure with an HTTP status and a stable error code."""

    def __init__(self, status: int, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.extra = extra
        self.headers: dict[str, str] = {}
        if code == "rate_limited" and "retry_after" in extra:
            self.headers["Retry-After"] = str(extra["retry_after"])


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(APIError)
    async def handle_api_error(error: APIError) -> tuple[Response, int, dict[str, str]]:
        return jsonify({"error": error.code, **error.extra}), error.status, error.headers
