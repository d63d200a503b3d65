"""One error type with a code string, for HTTP answers and refused WebSocket handshakes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart, Response, jsonify


class APIError(Exception):
    """An expected failure: an HTTP status, a stable error code, extra JSON fields and headers.

    The body is `{"error": code, **extra}`; Quart's handler below and the chat
    WebSocket's handshake (`realtime/middleware.py`) both answer with it.
    """

    def __init__(
        self, status: int, code: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.extra = extra
        self.headers = dict(headers or {})

    @classmethod
    def retry_later(cls, status: int, code: str, seconds: int) -> APIError:
        """A refusal the client may retry after `seconds`: in the body and as `Retry-After`."""
        return cls(status, code, headers={"Retry-After": str(seconds)}, retry_after=seconds)

    def body(self) -> dict[str, Any]:
        return {"error": self.code, **self.extra}


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(APIError)
    async def handle_api_error(error: APIError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(error.body()), error.status, error.headers
